"""End-to-end serving on vLLM's V1 engine: dotvllm vs vLLM's default structured-output backend.

One question: on the V1 CPU demo server, with 16 concurrent guided requests, is the throughput
with dotvllm at least that of the same server with vLLM's default backend (``auto`` → xgrammar),
and is every output valid? vLLM V1 refuses per-request backend selection, so two servers run side
by side with the same arguments: ours (the plugin, default ``auto``) and vLLM's
(``DOTVLLM_DISABLE=1``). Both stay up for the whole run and the timed rounds alternate between
them (ours, default, default, ours, ...), so a load change on a shared machine falls on both alike;
the server not being timed is paused (SIGSTOP to its process group, SIGCONT after), because both
bind their model threads to the same core and an idle vLLM CPU worker keeps polling for a while. Each spec is sent once to each server
before timing (its compile is not in the timed runs); then ``--repeats`` rounds per server of
``--concurrency`` concurrent completions of ``--max-tokens`` tokens. Correctness first: every
timed output is checked (``re`` / ``jsonschema``); a case with an invalid output reports it and its
throughput is not compared. The ratio is ours / default of tokens per second over all rounds;
the median of the per-pair ratios (each round of ours against the other server's round next to
it) is printed beside it, and so is the CPU time the server's processes (API server, engine core,
compile workers) spent per request during its rounds, which other load on the machine hardly
changes. Tokens per request are reported too: the two backends do not constrain
to the same language (vLLM's default JSON allows whitespace between tokens, ours none unless
``whitespace_pattern`` says so), so a random model's outputs differ in length, and each round
lasts as long as its longest request.

    .venv-v1/bin/python benchmarks/e2e_serving_v1.py [--concurrency 16] [--repeats 6] [--max-tokens 96]

Prints a table and writes ``benchmarks/results/e2e_serving_v1.json``.

``--servers A,B`` picks the two servers (default ``dotvllm,vllm-default``): ``dotvllm`` (the plugin,
routing on), ``vllm-default`` (the plugin loaded, ``DOTVLLM_DISABLE=1``: xgrammar), ``no-plugin``
(``VLLM_PLUGINS`` lists every other general plugin: ours is not even imported). The same name
twice is an A/A control: two identical servers, whose ratio shows what start order and load alone
do. The CPU time per request is also split by process (API server, engine core, model worker,
compile workers), and the 1-minute load average is recorded at every round.

``--one-at-a-time N`` measures differently: N blocks, each starting a fresh server of each kind
in turn (the order alternating between blocks) and timing it while it is the only server up;
the ratio column is then the median over blocks of the two servers' median round times. On the
2-core machine of docs/benchmarks.md two co-resident servers, one of them paused, differ by up
to 2× with identical code (an A/A run), which is why this mode exists; round times of a single
server are bimodal there too (see the docs), so read either mode's short-request ratios with that.

``--queue-sleep-us N`` starts both servers with ``benchmarks/_queue_sleep`` on ``PYTHONPATH``: vLLM's
shared-memory queue then sleeps N µs per poll where it would call ``sched_yield``. That yielding
wait is what made instances swing: a process that yields in a loop hands its core to anything
runnable, so on 2 cores a server's speed followed whatever else ran (docs/benchmarks.md, "What made
server instances slow"). With it, the unconstrained control comes out at 0.98×.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import re
import signal
import statistics
import sys
import threading
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
QUEUE_SLEEP_DIR = REPO_ROOT / "benchmarks" / "_queue_sleep"


def queue_sleep_env(sleep_us: float) -> dict[str, str]:
    """Environment that makes vLLM's shared-memory queue sleep instead of yield while it waits
    (``benchmarks/_queue_sleep/sitecustomize.py``); empty for ``sleep_us`` 0 (vLLM as shipped)."""
    if not sleep_us:
        return {}
    path = os.pathsep.join(p for p in (str(QUEUE_SLEEP_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "DOTVLLM_BENCH_QUEUE_SLEEP_US": f"{sleep_us:g}"}


def _other_general_plugins() -> str:
    from importlib.metadata import entry_points

    return ",".join(e.name for e in entry_points(group="vllm.general_plugins") if e.name != "dotvllm") or "none"


SERVER_KINDS = {
    "dotvllm": {},
    "vllm-default": {"DOTVLLM_DISABLE": "1"},
    "no-plugin": {"VLLM_PLUGINS": _other_general_plugins()},
}

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


def _role(proc, server) -> str:
    if proc.pid == server.pid:
        return "api_server"
    if proc.compile_worker_of is not None:
        return "compile_workers"
    if "EngineCor" in proc.name:
        return "engine_core"
    if "Worker" in proc.name:
        return "model_worker"
    return "other"


def cpu_seconds(server) -> dict[str, float]:
    """User + system CPU time so far of the server's processes, by role (API server, engine core,
    model worker, compile workers, other)."""
    ticks: dict[str, int] = {}
    for proc in server.processes():
        try:
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            role = _role(proc, server)
            ticks[role] = ticks.get(role, 0) + int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return {role: t / os.sysconf("SC_CLK_TCK") for role, t in ticks.items()}


def timed_round(server, so, check, args, rep: int) -> tuple[float, dict, int, list[str]]:
    seeds = range(rep * 1000, rep * 1000 + args.concurrency)
    cpu0 = cpu_seconds(server)
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(lambda s: complete(server.base_url, so, args.max_tokens, s), seeds))
    wall = time.perf_counter() - t0
    cpu1 = cpu_seconds(server)
    cpu = {role: cpu1.get(role, 0.0) - cpu0.get(role, 0.0) for role in cpu1.keys() | cpu0.keys()}
    tokens, invalid = 0, []
    for text, finish, n in results:
        tokens += n
        try:
            ok = check is None or check(text, finish)
        except Exception:  # noqa: BLE001 - an invalid output is reported, not raised
            ok = False
        if not ok:
            invalid.append(text[:80])
    return wall, cpu, tokens, invalid


def summary(walls: list[float], cpus: list[dict], loads: list[float], tokens: int, invalid: list[str], args) -> dict:
    n_req = len(walls) * args.concurrency
    totals = [sum(c.values()) for c in cpus]
    roles = sorted({role for c in cpus for role in c})
    return {"wall_s_median": round(statistics.median(walls), 3), "wall_s": [round(w, 3) for w in walls],
            "load_1min": [round(x, 2) for x in loads],
            "server_cpu_s": [round(c, 2) for c in totals], "server_cpu_s_per_request": round(sum(totals) / n_req, 4),
            "cpu_ms_per_request_by_process": {role: round(sum(c.get(role, 0.0) for c in cpus) / n_req * 1e3, 2)
                                              for role in roles},
            "tokens_per_s": round(tokens / sum(walls), 1), "invalid": invalid, "requests": n_req,
            "tokens_per_request": round(tokens / n_req, 1), "requests_per_s": round(n_req / sum(walls), 2)}


def pause(server, paused: bool) -> None:
    """Stop (SIGSTOP) or continue (SIGCONT) every process of an idle server's process group.

    Both servers bind their model threads to the same core, and an idle vLLM CPU worker keeps
    polling for work for a while after its last step: without this, the server that is not being
    timed takes CPU from the one that is, unevenly between short and long rounds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.pid, signal.SIGSTOP if paused else signal.SIGCONT)


def run_cases(servers: dict, a: str, b: str, args) -> dict:
    """Every case on both servers, rounds interleaved; returns per-server results and the pair
    ratios (B's round time / A's)."""
    labels = list(servers)
    out = {label: {"cases": {}} for label in labels}
    pairs = {}
    for name, so, check in CASES:
        if name not in args.cases:
            continue
        for label in labels:
            for other in labels:
                pause(servers[other], other != label)
            complete(servers[label].base_url, so, args.max_tokens, 0)  # warm-up: compile outside the timing
        walls = {label: [] for label in labels}
        cpus = {label: [] for label in labels}
        loads = {label: [] for label in labels}
        tokens = dict.fromkeys(labels, 0)
        invalid = {label: [] for label in labels}
        for rep in range(args.repeats):
            order = labels if rep % 2 == 0 else labels[::-1]
            for label in order:
                for other in labels:
                    pause(servers[other], other != label)
                loads[label].append(os.getloadavg()[0])
                wall, cpu, n, bad = timed_round(servers[label], so, check, args, rep)
                walls[label].append(wall)
                cpus[label].append(cpu)
                tokens[label] += n
                invalid[label].extend(bad)
        for label in labels:
            out[label]["cases"][name] = summary(walls[label], cpus[label], loads[label], tokens[label],
                                                invalid[label], args)
        # tokens per round are equal between servers when outputs have the same length; per-pair
        # ratios of round times are then the throughput ratios of neighbouring rounds
        pairs[name] = [round(wb / wa, 3) for wa, wb in zip(walls[a], walls[b])]
        log(f"  {name}: " + ", ".join(f"{label} {out[label]['cases'][name]['tokens_per_s']} tok/s "
                                      f"(invalid {len(invalid[label])})" for label in labels))
    out["pair_time_ratios"] = pairs
    return out


def closed_loop(server, so, check, args, seconds: float, seed0: int) -> dict:
    """``args.concurrency`` clients, each sending its next request as soon as its last one is
    answered, for ``seconds``: the steady state, with no idle gap between rounds. Requests still
    in flight at the end are answered but not counted."""
    seeds = itertools.count(seed0)
    lock = threading.Lock()
    done = {"requests": 0, "tokens": 0, "invalid": []}
    cpu0 = cpu_seconds(server)
    deadline = time.perf_counter() + seconds

    def client():
        while time.perf_counter() < deadline:
            with lock:
                seed = next(seeds)
            text, finish, n = complete(server.base_url, so, args.max_tokens, seed)
            if time.perf_counter() > deadline:
                return
            try:
                ok = check is None or check(text, finish)
            except Exception:  # noqa: BLE001 - an invalid output is reported, not raised
                ok = False
            with lock:
                done["requests"] += 1
                done["tokens"] += n
                if not ok:
                    done["invalid"].append(text[:80])

    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu1 = cpu_seconds(server)
    done["cpu"] = {role: cpu1.get(role, 0.0) - cpu0.get(role, 0.0) for role in cpu1.keys() | cpu0.keys()}
    done["seconds"] = seconds
    done["load_1min"] = os.getloadavg()[0]
    return done


def closed_loop_summary(windows: list[dict]) -> dict:
    n = sum(w["requests"] for w in windows)
    secs = sum(w["seconds"] for w in windows)
    roles = sorted({role for w in windows for role in w["cpu"]})
    total_cpu = sum(sum(w["cpu"].values()) for w in windows)
    return {"requests": n, "seconds": secs, "requests_per_s": round(n / secs, 2),
            "tokens_per_s": round(sum(w["tokens"] for w in windows) / secs, 1),
            "tokens_per_request": round(sum(w["tokens"] for w in windows) / max(n, 1), 1),
            "requests_per_s_by_block": [round(w["requests"] / w["seconds"], 2) for w in windows],
            "server_cpu_s_per_request": round(total_cpu / max(n, 1), 4),
            "cpu_ms_per_request_by_process": {role: round(sum(w["cpu"].get(role, 0.0) for w in windows) / max(n, 1) * 1e3, 2)
                                              for role in roles},
            "load_1min": [round(w["load_1min"], 2) for w in windows],
            "invalid": [t for w in windows for t in w["invalid"]]}


def measure_alone(server, args) -> dict:
    """Every case on one server (the only one up): per case its rounds' walls, CPU, loads, tokens,
    invalid outputs."""
    raw = {}
    for name, so, check in CASES:
        if name not in args.cases:
            continue
        complete(server.base_url, so, args.max_tokens, 0)  # warm-up: compile outside the timing
        if args.closed_loop:
            raw[name] = closed_loop(server, so, check, args, args.closed_loop, 10_000)
            continue
        r = raw[name] = {"walls": [], "cpus": [], "loads": [], "tokens": 0, "invalid": []}
        for rep in range(args.repeats):
            r["loads"].append(os.getloadavg()[0])
            wall, cpu, n, bad = timed_round(server, so, check, args, rep)
            r["walls"].append(wall)
            r["cpus"].append(cpu)
            r["tokens"] += n
            r["invalid"].extend(bad)
    return raw


def run_one_at_a_time(configs, a: str, b: str, args) -> tuple[dict, dict, dict]:
    """``--one-at-a-time N``: N blocks; in each, a fresh server of each kind, one after the other
    (the order alternating between blocks), each measured while it is the only server up.
    Returns (results as ``run_cases`` gives them, with the per-block ratios of median round times
    in ``pair_time_ratios``; startup seconds per label; whether dotvllm answered, per label)."""
    raws = {label: [] for label, _ in configs}
    startups = {label: [] for label, _ in configs}
    answered = {label: True for label, _ in configs}
    for block in range(args.one_at_a_time):
        order = configs if block % 2 == 0 else configs[::-1]
        for label, env in order:
            log(f"block {block + 1}/{args.one_at_a_time}: starting server {label}")
            server = start_server(ensure_model(), extra_env={**SERVER_ENV, **queue_sleep_env(args.queue_sleep_us), **env},
                                  log_path=Path(f"/tmp/e2e-v1-{label}.log"), startup_timeout_s=600)
            try:
                raws[label].append(measure_alone(server, args))
                answered[label] = answered[label] and "compiled by dotvllm" in server.log(2_000_000)
                startups[label].append(server.startup_s)
            finally:
                server.stop()
    results = {label: {"cases": {}} for label in raws}
    pairs = {}
    for name in args.cases:
        for label, blocks in raws.items():
            if args.closed_loop:
                results[label]["cases"][name] = closed_loop_summary([r[name] for r in blocks])
                continue
            out = results[label]["cases"][name] = summary(
                [w for r in blocks for w in r[name]["walls"]], [c for r in blocks for c in r[name]["cpus"]],
                [x for r in blocks for x in r[name]["loads"]], sum(r[name]["tokens"] for r in blocks),
                [t for r in blocks for t in r[name]["invalid"]], args)
            out["wall_s_median_by_block"] = [round(statistics.median(r[name]["walls"]), 3) for r in blocks]
        ca, cb = results[a]["cases"][name], results[b]["cases"][name]
        if args.closed_loop:  # A's requests/s over B's, block by block
            pairs[name] = [round(x / y, 3) if y else float("nan")
                           for x, y in zip(ca["requests_per_s_by_block"], cb["requests_per_s_by_block"])]
        else:  # B's median round time over A's, block by block
            pairs[name] = [round(wb / wa, 3) for wa, wb in zip(ca["wall_s_median_by_block"], cb["wall_s_median_by_block"])]
        log(f"  {name}: " + ", ".join(f"{label} {results[label]['cases'][name]['tokens_per_s']} tok/s "
                                      f"(invalid {len(results[label]['cases'][name]['invalid'])})" for label in raws))
    results["pair_time_ratios"] = pairs
    return results, {label: statistics.median(v) for label, v in startups.items()}, answered


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=6, help="timed rounds per case and server")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--servers", default="dotvllm,vllm-default",
                    help=f"A,B: the two servers compared (A / B), each one of {', '.join(SERVER_KINDS)}; "
                         "the same name twice is an A/A control")
    ap.add_argument("--cases", default=",".join(name for name, _, _ in CASES),
                    help="comma-separated case names (default: all)")
    ap.add_argument("--default-first", action="store_true",
                    help="server B (vLLM's default backend by default) starts first and takes the first round")
    ap.add_argument("--one-at-a-time", type=int, default=0, metavar="N",
                    help="instead of both servers up with rounds interleaved: N blocks, each a fresh server "
                         "of each kind measured alone, one after the other (order alternating by block)")
    ap.add_argument("--closed-loop", type=float, default=0.0, metavar="SECONDS",
                    help="with --one-at-a-time: per case and server, one window of SECONDS in which each of the "
                         "--concurrency clients sends its next request as soon as the last is answered "
                         "(steady state, no gaps between rounds) instead of --repeats rounds")
    ap.add_argument("--queue-sleep-us", type=float, default=0.0, metavar="US",
                    help="both servers' vLLM shared-memory queues sleep US microseconds per poll instead of "
                         "calling sched_yield (benchmarks/_queue_sleep/sitecustomize.py); 0: vLLM as shipped")
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    kinds = args.servers.split(",")
    if len(kinds) != 2 or any(k not in SERVER_KINDS for k in kinds):
        ap.error(f"--servers: two of {', '.join(SERVER_KINDS)}, got {args.servers!r}")
    if args.closed_loop and not args.one_at_a_time:
        ap.error("--closed-loop needs --one-at-a-time N")
    args.cases = args.cases.split(",")
    unknown = set(args.cases) - {name for name, _, _ in CASES}
    if unknown:
        ap.error(f"--cases: unknown {sorted(unknown)}")
    a, b = kinds[0], kinds[1] if kinds[1] != kinds[0] else kinds[1] + "-2"
    configs = [(a, SERVER_KINDS[kinds[0]]), (b, SERVER_KINDS[kinds[1]])]
    if args.default_first:
        configs.reverse()
    servers = {}
    load_before = os.getloadavg()
    labels = [label for label, _ in configs]
    if args.one_at_a_time:
        results, startups, answered = run_one_at_a_time(configs, a, b, args)
    else:
        try:
            for label, env in configs:
                log(f"starting server: {label}")
                servers[label] = start_server(ensure_model(), extra_env={**SERVER_ENV, **queue_sleep_env(args.queue_sleep_us), **env},
                                              log_path=Path(f"/tmp/e2e-v1-{label}.log"), startup_timeout_s=600)
            results = run_cases(servers, a, b, args)
            answered = {label: "compiled by dotvllm" in servers[label].log(2_000_000) for label in servers}
            startups = {label: servers[label].startup_s for label in servers}
        finally:
            for server in servers.values():
                pause(server, False)
                server.stop()
    mode = (f"one server at a time, {args.one_at_a_time} blocks of a fresh server each" if args.one_at_a_time
            else "both servers up, rounds interleaved")
    if args.queue_sleep_us:
        mode += f", vLLM's queue wait sleeps {args.queue_sleep_us:g} µs per poll instead of yielding"
    if args.closed_loop:
        mode += f", closed loop: {args.concurrency} clients for {args.closed_loop:g} s per case"
    for label in labels:
        results[label]["startup_s"] = round(startups[label], 1)
        results[label]["compiled_by_dotvllm"] = answered[label]
    ra, rb = results[a], results[b]
    rows = []
    for name in args.cases:
        ca, cb = ra["cases"][name], rb["cases"][name]
        valid = not ca["invalid"] and not cb["invalid"]
        ratio = ca["tokens_per_s"] / cb["tokens_per_s"] if cb["tokens_per_s"] else float("nan")
        pair = statistics.median(results["pair_time_ratios"][name])
        cpu = cb["server_cpu_s_per_request"] / ca["server_cpu_s_per_request"] if ca["server_cpu_s_per_request"] else 0
        by_process = " | ".join(
            f"{ca['cpu_ms_per_request_by_process'].get(role, 0):.1f} / {cb['cpu_ms_per_request_by_process'].get(role, 0):.1f}"
            for role in ("api_server", "engine_core", "model_worker"))
        rows.append((name, ca["tokens_per_s"], cb["tokens_per_s"], f"{ratio:.2f}×" if valid else "invalid output",
                     f"{pair:.2f}×", f'{ca["server_cpu_s_per_request"] * 1e3:.0f} / {cb["server_cpu_s_per_request"] * 1e3:.0f}'
                     f" ({cpu:.2f}×)", by_process, f'{ca["tokens_per_request"]} / {cb["tokens_per_request"]}',
                     f'{ca["requests_per_s"]} / {cb["requests_per_s"]}', len(ca["invalid"]), len(cb["invalid"])))
    headers = ("case", f"{a} tok/s", f"{b} tok/s", "A / B",
               ("A / B requests/s (median block)" if args.closed_loop else "B time / A (median block)")
               if args.one_at_a_time else "B time / A (median pair)",
               "server CPU ms/request (A / B; B ÷ A)", "CPU ms/request A / B: API server | engine core | worker",
               "tokens/request (A / B)", "requests/s (A / B)", "invalid (A)", "invalid (B)")
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    load_after = os.getloadavg()
    print(f"vLLM {metadata.version('vllm')} V1, {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.concurrency} concurrent × {args.repeats} rounds per server × {args.max_tokens} tokens, "
          f"{mode}, demo model (Mistral 32k vocabulary); A = {a}, B = {b}, started "
          f"{' then '.join(label for label, _ in configs)}; startup {ra['startup_s']} s / {rb['startup_s']} s; "
          f"load average before {', '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {', '.join(f'{x:.2f}' for x in load_after)}")
    for r in (headers, *rows):
        print(" | ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    print("dotvllm answered: " + ", ".join(f"{label} {answered[label]}" for label in labels))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "vllm": metadata.version("vllm"), "machine": platform.machine(), "cores": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": load_after,
        "args": {k: str(v) for k, v in vars(args).items()},
        "mode": mode, "a": a, "b": b,
        "start_order": labels, "servers": {label: results[label] for label in labels},
        "pair_time_ratios": results["pair_time_ratios"],
    }, indent=2))
    return 0 if all(not r[-2] and not r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
