"""The serving benchmark's ``--queue-sleep-us`` harness (``benchmarks/_queue_sleep``): on the
installed vLLM it replaces the shared-memory queue's polling yield by a sleep of the given length,
and without it the queue is vLLM's own. Fresh interpreters: the patch acts at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "_queue_sleep"

_PROBE = """
import json, time
import vllm.distributed.device_communicators.shm_broadcast as queue
from vllm.distributed import utils
t0 = time.perf_counter()
for _ in range(20):
    queue.sched_yield()
print(json.dumps({"own": queue.sched_yield is utils.sched_yield, "seconds": time.perf_counter() - t0}))
"""


def _probe(**env) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DOTVLLM_BENCH_QUEUE_SLEEP_US")}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=full_env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_queue_wait_sleeps_with_the_harness():
    r = _probe(PYTHONPATH=str(HARNESS), DOTVLLM_BENCH_QUEUE_SLEEP_US="5000")
    assert not r["own"]
    assert r["seconds"] >= 20 * 0.005  # 20 polls of at least 5 ms each


def test_queue_is_vllms_own_without_it():
    r = _probe()
    assert r["own"]
    assert r["seconds"] < 0.05  # 20 yields
