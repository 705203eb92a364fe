"""Servers started by the project's tools and benchmarks never outlive the process that started them.

``start_server`` runs ``vllm serve`` in its own session and ties that process group to the
starting process with a :class:`~dotvllm_plugin.devtools.server.Lifeline`. Checked here on a
stand-in group (``sleep`` processes), so no vLLM is needed: the starting process is SIGKILLed
(no ``finally``, no exit handler runs) and the whole group must go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from test_compilation_manager import _process_gone

STARTER = """
import subprocess, sys, time
from dotvllm_plugin.devtools.server import Lifeline
leader = subprocess.Popen(["sh", "-c", "sleep 600 & echo $!; wait"], start_new_session=True,
                          stdout=subprocess.PIPE, text=True)
child = int(leader.stdout.readline())
lifeline = Lifeline(leader.pid)
print(leader.pid, child, lifeline.watchdog.pid, flush=True)
if sys.argv[1] == "close":
    leader.kill(); leader.wait()
    lifeline.close()
    print("closed", lifeline.watchdog.poll(), flush=True)
time.sleep(600)
"""


def _start(mode: str):
    starter = subprocess.Popen([sys.executable, "-c", STARTER, mode], stdout=subprocess.PIPE, text=True)
    leader, child, watchdog = (int(x) for x in starter.stdout.readline().split())
    return starter, leader, child, watchdog


def test_the_group_dies_with_the_process_that_started_it():
    starter, leader, child, watchdog = _start("kill")
    try:
        assert not _process_gone(child, wait_s=0.5), "the stand-in group did not start"
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(timeout=30)
        assert _process_gone(leader, wait_s=20) and _process_gone(child, wait_s=20)
        assert _process_gone(watchdog, wait_s=20)
    finally:
        for pid in (leader, child, watchdog):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        starter.kill()
        starter.wait(timeout=30)
        starter.stdout.close()


def test_closing_the_lifeline_ends_its_watchdog():
    starter, leader, child, watchdog = _start("close")
    try:
        line = starter.stdout.readline().split()
        assert line[0] == "closed" and line[1] != "None", line  # the watchdog exited within close()
        assert _process_gone(watchdog, wait_s=5)
        assert _process_gone(child, wait_s=20)  # the group's other member went with it
    finally:
        starter.kill()
        starter.wait(timeout=30)
        starter.stdout.close()
        for pid in (leader, child, watchdog):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
