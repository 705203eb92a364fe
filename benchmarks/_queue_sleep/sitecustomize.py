"""Benchmark harness only (``e2e_serving_v1.py --queue-sleep-us N``), never installed.

vLLM's shared-memory message queue (``vllm.distributed.device_communicators.shm_broadcast``) waits
for the next message by calling ``os.sched_yield()`` in a loop for up to a second after each one.
A process yielding in a loop hands its core to anything else runnable — another server's
process, a test, the benchmark's own client — for that task's whole time slice, so on a 2-core
machine a server's speed follows whatever else happens to run (2–3× swings within one server).
Put on ``PYTHONPATH``, this module makes that loop sleep ``DOTVLLM_BENCH_QUEUE_SLEEP_US``
microseconds per poll instead: a waiting process sleeps, and the scheduler shares the cores by
demand. Same queue, same protocol; only the polling wait differs.
"""

import importlib.abc
import importlib.util
import os
import sys
import time

_MODULE = "vllm.distributed.device_communicators.shm_broadcast"
_SLEEP_S = float(os.environ.get("DOTVLLM_BENCH_QUEUE_SLEEP_US", "100")) * 1e-6


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            module.sched_yield = lambda: time.sleep(_SLEEP_S)  # the name the queue's wait loops call

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchOnImport())
