"""Harness for integration tests against real ``vllm serve`` processes on 127.0.0.1.

Every test under ``tests/integration/`` gets the ``integration`` marker (``-m "not integration"``
deselects them). They need the vLLM CPU build (``bash scripts/setup_env.sh``; run pytest with
``.venv/bin/python``). Without vLLM they are skipped — unless ``DOTVLLM_REQUIRE_INTEGRATION=1``
(set by ``.ci/run``), which turns the skip into an error so CI cannot pass without them.

Fixtures
--------
``demo_model_dir`` (session)
    The tiny random-weight Llama of :mod:`dotvllm_plugin.devtools.demo_model`, built once (cached on disk).
``server_pool`` (session)
    A :class:`ServerPool`: one server per configuration (frontend, environment, arguments), shared
    by every module that asks for that configuration, started on first use (several at once with
    :meth:`ServerPool.start_all`) and stopped after the last integration test. A server a test
    stopped is started again for the next test that asks for it.
``server_mp`` / ``server_inprocess`` (function; the server itself is shared)
    The suite's standard servers from the pool (default multiprocessing frontend, and
    ``--disable-frontend-multiprocessing``; both with :data:`STANDARD_ENV`), used by
    ``test_server_smoke.py`` and ``test_plugin_guided.py``; the first use starts both at once.
``vllm_server`` (function)
    A factory: ``vllm_server(frontend="mp" | "inprocess", extra_env=None, extra_args=())`` starts a
    server and returns a :class:`dotvllm_plugin.devtools.server.ServerProcess` (``.base_url``, ``.pid``,
    ``.log_path``, ``.stop()``; ``.processes()`` lists every live process of the server, orphans
    re-parented to PID 1 included, found by its ``.tag``); every server it started is stopped at
    teardown.

:func:`start_server` is the same as the factory for code that manages the lifetime itself, and
:func:`start_servers` starts several at once (a start is mostly single-threaded Python imports: on
two cores two servers start in little more than the time of one). A failing test that used a
server gets the end of that server's log attached to its report.

Order: ``test_server_smoke.py`` runs first (its warm-up check needs standard servers that no
guided request has reached yet), except its stop test, which runs after every other integration
test because it stops the shared ``mp`` server; then ``test_plugin_compile_limits.py`` and
``test_plugin_preemption.py``, whose servers start together (:func:`pytest_collection_modifyitems`).
Environment: ``DOTVLLM_SERVER_STARTUP_TIMEOUT_S`` (default 300).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import itertools
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from dotvllm_plugin.devtools.demo_model import ensure_model
from dotvllm_plugin.devtools.server import SERVER_TAG_ENV, ServerProcess, ServerStartError, find_processes
from dotvllm_plugin.devtools.server import start_server as _start_server

HERE = Path(__file__).resolve().parent
STARTUP_TIMEOUT_S = float(os.environ.get("DOTVLLM_SERVER_STARTUP_TIMEOUT_S", "300"))
#: Environment of the standard servers: a runaway compile (test_plugin_guided) is stopped after 15 s.
STANDARD_ENV = {"DOTVLLM_COMPILE_TIMEOUT_S": "15"}
STANDARD = ({"frontend": "mp", "extra_env": STANDARD_ENV}, {"frontend": "inprocess", "extra_env": STANDARD_ENV})
#: The servers of test_plugin_compile_limits.py and test_plugin_preemption.py, which run one after
#: the other: the first starts both (the second's server idles for seconds).
COMPILE_LIMITS_SERVER = {"frontend": "mp",
                         "extra_env": {"DOTVLLM_COMPILE_TIMEOUT_S": "0.001", "DOTVLLM_COMPILE_WORKERS": "1"}}
PREEMPTION_SERVER = {"frontend": "mp", "extra_args": ("--num-gpu-blocks-override", "24", "--max-model-len", "256",
                                                      "--max-num-seqs", "16")}

__all__ = ["COMPILE_LIMITS_SERVER", "PREEMPTION_SERVER", "STANDARD_ENV", "ServerPool", "ServerProcess",
           "ServerStartError", "runs_module", "start_server", "start_servers"]


def _vllm_missing_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed in this environment (bash scripts/setup_env.sh; use .venv/bin/python)"
    from dotvllm_plugin.devtools.server import installed_vllm_version
    from dotvllm_plugin.integrations import supported_engine

    version = installed_vllm_version()
    if version is not None and supported_engine(version) == "v1":
        return f"vLLM {version} is a V1 release: the V0 integration tests need .venv (tests/integration_v1 is for V1)"
    return None


def pytest_configure(config):
    # `timeout` (as in .ci/run) and CI runners stop pytest with SIGTERM, which would end it without
    # teardown and leave the servers (own process groups) running; make it an interrupt instead so
    # the fixtures stop them.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


#: Integration modules that run first, in this order; the rest keep pytest's order after them.
_FIRST = ("test_server_smoke.py", "test_plugin_compile_limits.py", "test_plugin_preemption.py")
_LAST = ("test_server_smoke.py", "test_stop_kills_the_whole_process_group")
_SELECTED_MODULES: set[str] = set()


def _order(item) -> tuple[int, int]:
    name = Path(str(item.path)).name
    if (name, item.originalname) == _LAST:
        return (2, 0)
    return (0, _FIRST.index(name)) if name in _FIRST else (1, 0)


def runs_module(name: str) -> bool:
    """Whether this session runs a test of the integration module ``name`` (a file name)."""
    return name in _SELECTED_MODULES


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    reason = _vllm_missing_reason()
    required = os.environ.get("DOTVLLM_REQUIRE_INTEGRATION") == "1"
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.integration)  # before `-m` deselects
        # A V1 environment skips these always: they test the V0 integration.
        if reason and (not required or "is a V1 release" in reason):
            item.add_marker(pytest.mark.skip(reason=reason))
        # With DOTVLLM_REQUIRE_INTEGRATION=1 they run anyway and fail on the missing `vllm`.
    yield
    # After pytest's own reordering by fixture parameters and `-m` / `-k`: the smoke module first,
    # its stop test after every other integration test (module docstring); a stable sort of the
    # integration items only, in the places they had.
    slots = [i for i, item in enumerate(items) if HERE in Path(str(item.path)).resolve().parents]
    _SELECTED_MODULES.clear()
    _SELECTED_MODULES.update(Path(str(items[i].path)).name for i in slots)
    for i, item in zip(slots, sorted([items[i] for i in slots], key=_order)):
        items[i] = item


_LOG_DIR: Path | None = None
_LOG_SEQ = itertools.count()  # thread-safe in CPython: servers started at once get distinct logs


def start_server(
    *,
    frontend: str = "mp",
    extra_env: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    model_dir: str | os.PathLike | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> ServerProcess:
    """Start ``vllm serve`` of the demo model on a free loopback port; wait for ``/health``.

    Raises :class:`ServerStartError` carrying the end of the server log if it does not come up.
    The caller must ``.stop()`` it (the fixtures do).
    """
    model = Path(model_dir) if model_dir is not None else ensure_model()
    log_path = None
    if _LOG_DIR is not None:
        log_path = _LOG_DIR / f"{frontend}-{next(_LOG_SEQ)}.log"
    return _start_server(
        model, frontend=frontend, extra_env=extra_env, extra_args=extra_args,
        log_path=log_path, startup_timeout_s=startup_timeout_s,
    )


def _kill_tagged(tag: str) -> None:
    for p in find_processes(None, tag):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGKILL)


def start_servers(specs: Sequence[dict[str, Any]], model_dir: str | os.PathLike | None = None) -> list[ServerProcess]:
    """Start one server per spec (keyword arguments of :func:`start_server`) at the same time.

    All or none: if one does not come up, or the wait is interrupted (SIGTERM), the others are
    stopped and the error is raised. Each server gets a known ``DOTVLLM_SERVER_TAG``, so a start
    still under way in its thread is ended by killing its processes.
    """
    if len(specs) <= 1:
        return [start_server(model_dir=model_dir, **spec) for spec in specs]
    tags = [uuid.uuid4().hex for _ in specs]
    executor = concurrent.futures.ThreadPoolExecutor(len(specs), thread_name_prefix="vllm-serve-start")
    futures = [
        executor.submit(start_server, model_dir=model_dir,
                        **{**spec, "extra_env": {**(spec.get("extra_env") or {}), SERVER_TAG_ENV: tag}})
        for spec, tag in zip(specs, tags)
    ]
    try:
        concurrent.futures.wait(futures)
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]
    except BaseException:
        deadline = time.monotonic() + 60
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            for tag in tags:  # a start under way sees its process exit and stops
                _kill_tagged(tag)
            time.sleep(0.2)
        for f in futures:
            if f.done() and f.exception() is None:
                f.result().stop()
        for tag in tags:
            _kill_tagged(tag)
        raise
    finally:
        executor.shutdown(wait=False)


def _key(spec: dict[str, Any]) -> tuple:
    return (spec.get("frontend", "mp"), tuple(sorted((spec.get("extra_env") or {}).items())),
            tuple(spec.get("extra_args", ())))


class ServerPool:
    """Servers shared between tests and modules: one per configuration, started on first use.

    A configuration is the keyword arguments of :func:`start_server` (frontend, extra_env,
    extra_args); the server of a configuration is reused as long as it runs. Use it for servers
    tests do not change: a test that kills its server or changes its state for others belongs on
    a server of its own (``vllm_server``, or a module fixture).
    """

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self._servers: dict[tuple, ServerProcess] = {}
        self._ever: set[tuple] = set()

    def get(self, spec: dict[str, Any], *, ahead: Sequence[dict[str, Any]] = ()) -> ServerProcess:
        """The server of ``spec``. ``ahead``: configurations a later module needs, started at the
        same time unless started before in this session."""
        return self.start_all([spec, *(s for s in ahead if _key(s) not in self._ever)])[0]

    def release(self, spec: dict[str, Any]) -> None:
        """Stop the server of ``spec`` (its last user is done with it)."""
        server = self._servers.pop(_key(spec), None)
        if server is not None:
            server.stop()

    def start_all(self, specs: Sequence[dict[str, Any]]) -> list[ServerProcess]:
        """The servers of ``specs``, the missing ones started at the same time."""
        keys = [_key(spec) for spec in specs]
        missing = {}
        for key, spec in zip(keys, specs):
            server = self._servers.get(key)
            if server is None or not server.alive():
                if server is not None:  # stopped or killed by a test: what is left of its group goes
                    self._servers.pop(key).stop()
                missing.setdefault(key, spec)
        for key, server in zip(missing, start_servers(list(missing.values()), self.model_dir)):
            self._servers[key] = server
            self._ever.add(key)
        return [self._servers[key] for key in keys]

    def stop_all(self) -> None:
        servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.stop()


_POOL: ServerPool | None = None


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> Path:
    global _LOG_DIR
    _LOG_DIR = tmp_path_factory.mktemp("vllm-serve-logs")
    return ensure_model()


@pytest.fixture(scope="session")
def server_pool(demo_model_dir) -> Iterator[ServerPool]:
    global _POOL
    _POOL = ServerPool(demo_model_dir)
    try:
        yield _POOL
    finally:
        _POOL.stop_all()
        _POOL = None


def pytest_runtest_teardown(item, nextitem):
    # The shared servers are not needed by the unit tests that follow the integration tests: stop
    # them now rather than at the end of the session (a later integration test starts them again).
    if _POOL is not None and (nextitem is None or HERE not in Path(str(nextitem.path)).resolve().parents):
        _POOL.stop_all()


@pytest.fixture
def vllm_server(demo_model_dir) -> Iterator:
    """Factory fixture: start servers in a test; all are stopped when the test ends."""
    started: list[ServerProcess] = []

    def factory(*, frontend: str = "mp", extra_env=None, extra_args: Sequence[str] = (), **kw) -> ServerProcess:
        server = start_server(frontend=frontend, extra_env=extra_env, extra_args=extra_args,
                              model_dir=demo_model_dir, **kw)
        started.append(server)
        return server

    factory.started = started
    yield factory
    for server in started:
        server.stop()


def standard_server(pool: ServerPool, frontend: str) -> ServerProcess:
    """The standard server of ``frontend``; the first call starts both (every module that uses one
    uses the other too)."""
    mp, inprocess = pool.start_all(STANDARD)
    return mp if frontend == "mp" else inprocess


@pytest.fixture
def server_mp(server_pool) -> ServerProcess:
    """The shared ``vllm serve`` with vLLM's default multiprocessing frontend."""
    return standard_server(server_pool, "mp")


@pytest.fixture
def server_inprocess(server_pool) -> ServerProcess:
    """The shared ``vllm serve --disable-frontend-multiprocessing``."""
    return standard_server(server_pool, "inprocess")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and HERE in Path(str(item.path)).resolve().parents:
        for name, value in getattr(item, "funcargs", {}).items():
            servers = [value] if isinstance(value, ServerProcess) else list(getattr(value, "started", []))
            for server in servers:
                if isinstance(server, ServerProcess):
                    state = "running" if server.alive() else f"exited {server.process.returncode}"
                    report.sections.append(
                        (f"vllm serve log ({name}, pid {server.pid}, {state}, {server.log_path})", server.log(8000))
                    )
    return report
