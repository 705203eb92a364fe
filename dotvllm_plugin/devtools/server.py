"""``vllm serve`` of a model as a child process in its own process group, for the demo, the
integration tests and the end-to-end benchmark. Does not import vllm."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

__all__ = [
    "MODEL_NAME",
    "SERVER_ARGS",
    "SERVER_ENV",
    "SERVER_TAG_ENV",
    "ProcInfo",
    "ServerProcess",
    "ServerStartError",
    "find_processes",
    "free_port",
    "installed_vllm_version",
    "log_tail",
    "plugin_present",
    "start_server",
    "vllm_command",
]

MODEL_NAME = "demo"  # --served-model-name
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SERVER_ARGS = ("--dtype", "float32", "--max-model-len", "1024", "--seed", "0")


SERVER_TAG_ENV = "DOTVLLM_SERVER_TAG"
"""Set (to a fresh uuid) in the environment of every server :func:`start_server` starts: every
process the server starts inherits it, so they can be found after being re-parented to PID 1."""
_WORKER_MARKER_ENV = "DOTVLLM_COMPILE_WORKER"  # dotvllm_plugin.compilation_manager.WORKER_MARKER_ENV


@dataclass(frozen=True)
class ProcInfo:
    """One process as seen in /proc."""

    pid: int
    ppid: int
    state: str  # "R", "S", "Z", ...
    name: str  # /proc/PID/comm
    cmdline: str
    compile_worker_of: int | None  # the pid in DOTVLLM_COMPILE_WORKER (our compile workers)
    tag: str | None  # the value of DOTVLLM_SERVER_TAG

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")

    @property
    def role(self) -> str:
        if self.compile_worker_of is not None:
            return "compile-worker"
        if "multiprocessing.resource_tracker" in self.cmdline:
            return "resource-tracker"
        if "multiprocessing.spawn" in self.cmdline or "multiprocessing.forkserver" in self.cmdline:
            return "mp-child"
        return "other"


def _read_proc(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/comm", "rb") as f:
            name = f.read().decode(errors="replace").strip()
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            environ = []
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    worker_of = tag = None
    for item in environ:
        key, _, value = item.partition(b"=")
        if key == _WORKER_MARKER_ENV.encode() and value.isdigit():
            worker_of = int(value)
        elif key == SERVER_TAG_ENV.encode():
            tag = value.decode(errors="replace")
    return ProcInfo(pid, int(fields[1]), fields[0], name, cmdline, worker_of, tag)


def find_processes(root_pid: int | None = None, tag: str | None = None, *, include_root: bool = True,
                   alive_only: bool = True) -> list[ProcInfo]:
    """Processes of a server, found by walking /proc (Linux): the descendants of ``root_pid``,
    every process whose environment carries ``DOTVLLM_SERVER_TAG=tag``, and every compile worker
    (``DOTVLLM_COMPILE_WORKER``) started by one of those — so orphans re-parented to PID 1 are
    found too. Zombies are left out unless ``alive_only=False``."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _read_proc(int(entry))
            if info is not None:
                table[info.pid] = info
    found: set[int] = set()
    if root_pid is not None and root_pid in table:
        found.add(root_pid)
    if tag:
        found.update(pid for pid, info in table.items() if info.tag == tag)
    changed = True
    while changed:  # close over children and compile workers of found processes
        changed = False
        for pid, info in table.items():
            if pid not in found and (info.ppid in found or info.compile_worker_of in found
                                     or (root_pid is not None and info.compile_worker_of == root_pid)):
                found.add(pid)
                changed = True
    if not include_root and root_pid is not None:
        found.discard(root_pid)
    return sorted((table[p] for p in found if not alive_only or table[p].alive), key=lambda i: i.pid)


class ServerStartError(RuntimeError):
    """``vllm serve`` exited or did not become healthy in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command() -> list[str]:
    """The ``vllm`` console script of this interpreter's environment."""
    beside = Path(sys.executable).parent / "vllm"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("vllm")
    if found:
        return [found]
    raise ServerStartError(
        "no `vllm` executable next to this Python or on PATH; run `bash scripts/setup_env.sh` and use "
        ".venv/bin/python"
    )


def log_tail(path: Path, max_chars: int = 6000) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return text[-max_chars:]


@dataclass
class ServerProcess:
    """A running ``vllm serve`` in its own process group."""

    process: subprocess.Popen
    base_url: str  # e.g. http://127.0.0.1:8123
    log_path: Path
    command: list[str]
    startup_s: float = float("nan")  # time from spawn to a healthy /health
    tag: str = field(default="")  # DOTVLLM_SERVER_TAG of its processes
    lifeline: "Lifeline | None" = None  # kills the group if the starting process dies first

    @property
    def pid(self) -> int:
        return self.process.pid

    def processes(self, *, include_root: bool = True) -> list[ProcInfo]:
        """Live processes of this server, its orphans included (:func:`find_processes`)."""
        return find_processes(self.pid, self.tag or None, include_root=include_root)

    def alive(self) -> bool:
        return self.process.poll() is None

    def healthy(self, timeout_s: float = 5.0) -> bool:
        import requests

        try:
            return requests.get(self.base_url + "/health", timeout=timeout_s).status_code == 200
        except requests.RequestException:
            return False

    def log(self, max_chars: int = 6000) -> str:
        return log_tail(self.log_path, max_chars)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM the process group (API server, engine process, workers), SIGKILL after
        ``timeout_s``; return the exit code."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        # Children that outlived the API server (e.g. an engine process) share its group.
        _signal_group(self.process.pid, signal.SIGKILL)
        if self.lifeline is not None:
            self.lifeline.close()
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_WATCHDOG = (
    "import os, signal, sys\n"
    "fd, pgid = int(sys.argv[1]), int(sys.argv[2])\n"
    "while os.read(fd, 4096):\n"
    "    pass\n"
    "try:\n"
    "    os.killpg(pgid, signal.SIGKILL)\n"
    "except OSError:\n"
    "    pass\n"
)


class Lifeline:
    """Kills a process group when the process that made this object dies, however it dies.

    A watchdog process blocks reading a pipe whose only write end this process holds (not
    inherited by anything it starts): when this process exits — SIGKILL included, where no
    ``finally`` or exit handler runs — the read sees EOF and the watchdog SIGKILLs the group.
    :meth:`close` (after a normal stop) ends the watchdog the same way; the group is gone by then.
    A ``vllm serve`` runs in its own session (so :meth:`ServerProcess.stop` reaches its engine and
    workers), which is why the kernel's parent-death signal alone would not do: it reaches only
    the direct child, and only while the thread that started it lives.
    """

    def __init__(self, pgid: int):
        read_end, self._write_end = os.pipe()  # both non-inheritable
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(read_end), str(pgid)], pass_fds=(read_end,),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            os.close(read_end)

    def close(self) -> None:
        if self._write_end is not None:
            os.close(self._write_end)
            self._write_end = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog.wait(timeout=10)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_server(
    model_dir: str | os.PathLike,
    *,
    frontend: str = "mp",
    extra_env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    log_path: str | os.PathLike | None = None,
    port: int | None = None,
    startup_timeout_s: float = 300.0,
) -> ServerProcess:
    """Start ``vllm serve model_dir`` on 127.0.0.1 and wait until ``/health`` answers 200.

    ``frontend="mp"`` is vLLM's default (API server + engine in a separate process);
    ``"inprocess"`` adds ``--disable-frontend-multiprocessing``. Raises :class:`ServerStartError`
    (with the end of the server log) if the server exits or is not healthy within
    ``startup_timeout_s``; the process group is killed then.
    """
    import requests

    if frontend not in ("mp", "inprocess"):
        raise ValueError(f"frontend must be 'mp' or 'inprocess', got {frontend!r}")
    port = port or free_port()
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"vllm-serve-{frontend}-", suffix=".log")
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    cmd = [
        *vllm_command(), "serve", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", MODEL_NAME,
        *SERVER_ARGS,
    ]
    if frontend == "inprocess":
        cmd.append("--disable-frontend-multiprocessing")
    cmd.extend(extra_args)
    env = {**os.environ, **SERVER_ENV, **(extra_env or {})}
    env.setdefault(SERVER_TAG_ENV, uuid.uuid4().hex)
    if not plugin_present() and "VLLM_USE_V1" not in (extra_env or {}):
        # Without dotvllm_plugin.integrations.vllm_v0 nothing forces the V0 engine; do it here so the built-in
        # guided-decoding backends of V0 answer.
        env["VLLM_USE_V1"] = "0"
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # own process group: stop() kills engine and workers too
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path, cmd, tag=env[SERVER_TAG_ENV])
    try:
        server.lifeline = Lifeline(proc.pid)  # the server's group = its pid (start_new_session)
    except BaseException:
        server.stop(timeout_s=10)
        raise
    deadline = t0 + startup_timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"vllm serve exited with code {proc.returncode} during startup "
                    f"(log {log_path}):\n{server.log()}"
                )
            try:
                if requests.get(server.base_url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"vllm serve not healthy after {startup_timeout_s:.0f} s (log {log_path}):\n{server.log()}"
                )
            time.sleep(0.5)
    except BaseException:
        server.stop(timeout_s=10)
        raise
    server.startup_s = time.monotonic() - t0
    return server


def installed_vllm_version() -> str | None:
    """The installed vLLM's version (from ``vllm/_version.py``, without importing vllm), or ``None``."""
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "_version.py"
    try:
        m = re.search(r"""__version__\s*=\s*(?:version\s*=\s*)?['"]([^'"]+)['"]""", path.read_text())
    except OSError:
        return None
    return m.group(1) if m else None


def plugin_present() -> bool:
    """Is ``dotvllm_plugin.integrations.vllm_v0`` (what the ``vllm.general_plugins`` entry point
    installs) a real package here? Checked without importing it (it imports vllm)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("dotvllm_plugin.integrations.vllm_v0")
    except (ImportError, ValueError):
        return False
    # A directory without __init__.py is a namespace package: no register() to load.
    return spec is not None and spec.origin is not None and os.path.isfile(spec.origin)
