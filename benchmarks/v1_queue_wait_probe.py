"""Where a V1 CPU server's time goes while it is slow: per-thread CPU of its processes.

Starts fresh ``no-plugin`` servers (vLLM as shipped) and ``queue-sleep`` servers (the same, with
``benchmarks/_queue_sleep`` on ``PYTHONPATH``: vLLM's shared-memory queue sleeps 100 µs per poll
instead of yielding), alternating; in each, ``--windows`` closed-loop windows of ``--seconds``
(16 clients, the ``--case`` of e2e_serving_v1), printing per window requests/s, CPU ms per request
by process and the busiest threads (share of a core, name, pid, tid, last CPU). One JSON line per
window; ``--out`` gets the list. (The run of 2026-12-04 in
``benchmarks/results/v1_queue_wait_probe_1204.jsonl`` labels the queue-sleep server ``despin``.)

    .venv-v1/bin/python benchmarks/v1_queue_wait_probe.py --instances 2 --windows 3
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import e2e_serving_v1 as E  # noqa: E402

from dotvllm_plugin.devtools.demo_model import ensure_model  # noqa: E402
from dotvllm_plugin.devtools.server import start_server  # noqa: E402


def threads_cpu(pids) -> dict:
    """(pid, process name, tid) -> (utime + stime in clock ticks, CPU it last ran on)."""
    out = {}
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            for tid in os.listdir(f"/proc/{pid}/task"):
                st = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                f = st[st.rfind(")") + 2:].split()
                out[(pid, comm, int(tid))] = (int(f[11]) + int(f[12]), int(f[36]))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="no-plugin,queue-sleep")
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--case", default="unconstrained")
    ap.add_argument("--out", default="/tmp/v1_queue_wait_probe.json")
    a = ap.parse_args()
    case = [c for c in E.CASES if c[0] == a.case][0]
    args = argparse.Namespace(concurrency=16, max_tokens=96)
    results = []
    kinds = a.kinds.split(",")
    for inst in range(a.instances):
        for kind in (kinds if inst % 2 == 0 else kinds[::-1]):
            env = {**E.SERVER_KINDS["no-plugin"], **(E.queue_sleep_env(100) if kind == "queue-sleep" else {})}
            server = start_server(ensure_model(), extra_env={**E.SERVER_ENV, **env}, log_path=Path(f"/tmp/v1-probe-{kind}.log"),
                                  startup_timeout_s=600)
            try:
                E.complete(server.base_url, case[1], 96, 0)
                for w in range(a.windows):
                    pids = [p.pid for p in server.processes()]
                    t0 = threads_cpu(pids)
                    r = E.closed_loop(server, case[1], case[2], args, a.seconds, 10_000 * (w + 1))
                    t1 = threads_cpu(pids)
                    hot = sorted(((t1[k][0] - t0[k][0]) / 100 / a.seconds, k[1], k[0], k[2], t1[k][1]) for k in t1 if k in t0)[::-1][:8]
                    rec = dict(kind=kind, inst=inst, window=w, rps=round(r["requests"] / a.seconds, 2), load=r["load_1min"],
                               cpu_ms_per_req={k: round(v / max(r["requests"], 1) * 1e3, 1) for k, v in r["cpu"].items()},
                               hot=[(round(u, 2), c, p, t, cpu) for u, c, p, t, cpu in hot], invalid=len(r["invalid"]))
                    print(json.dumps(rec), flush=True)
                    results.append(rec)
            finally:
                server.stop()
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
