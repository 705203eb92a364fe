"""Harness for integration tests against real ``vllm serve`` processes on 127.0.0.1.

Every test under ``tests/integration/`` gets the ``integration`` marker (``-m "not integration"``
deselects them). They need the vLLM CPU build (``bash scripts/setup_env.sh``; run pytest with
``.venv/bin/python``). Without vLLM they are skipped — unless ``DOTVLLM_REQUIRE_INTEGRATION=1``
(set by ``.ci/run``), which turns the skip into an error so CI cannot pass without them.

Fixtures
--------
``demo_model_dir`` (session)
    The tiny random-weight Llama of :mod:`dotvllm_plugin.devtools.demo_model`, built once (cached on disk).
``vllm_server`` (function)
    A factory: ``vllm_server(frontend="mp" | "inprocess", extra_env=None, extra_args=())`` starts a
    server and returns a :class:`dotvllm_plugin.devtools.server.ServerProcess` (``.base_url``, ``.pid``,
    ``.log_path``, ``.stop()``; ``.processes()`` lists every live process of the server, orphans
    re-parented to PID 1 included, found by its ``.tag``); every server it started is stopped at
    teardown.
``server_mp`` / ``server_inprocess`` (module)
    One server per test module for each frontend (default multiprocessing frontend, and
    ``--disable-frontend-multiprocessing``).

:func:`start_server` is the same as the factory for code that manages the lifetime itself. A
failing test that used a server gets the end of that server's log attached to its report.
Environment: ``DOTVLLM_SERVER_STARTUP_TIMEOUT_S`` (default 300).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from dotvllm_plugin.devtools.demo_model import ensure_model
from dotvllm_plugin.devtools.server import ServerProcess, ServerStartError
from dotvllm_plugin.devtools.server import start_server as _start_server

HERE = Path(__file__).resolve().parent
STARTUP_TIMEOUT_S = float(os.environ.get("DOTVLLM_SERVER_STARTUP_TIMEOUT_S", "300"))

__all__ = ["ServerProcess", "ServerStartError", "start_server"]


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


def pytest_collection_modifyitems(config, items):
    reason = _vllm_missing_reason()
    required = os.environ.get("DOTVLLM_REQUIRE_INTEGRATION") == "1"
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.integration)
        # A V1 environment skips these always: they test the V0 integration.
        if reason and (not required or "is a V1 release" in reason):
            item.add_marker(pytest.mark.skip(reason=reason))
        # With DOTVLLM_REQUIRE_INTEGRATION=1 they run anyway and fail on the missing `vllm`.


_LOG_DIR: Path | None = None


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
        n = len(list(_LOG_DIR.glob(f"{frontend}-*.log")))
        log_path = _LOG_DIR / f"{frontend}-{n}.log"
    return _start_server(
        model, frontend=frontend, extra_env=extra_env, extra_args=extra_args,
        log_path=log_path, startup_timeout_s=startup_timeout_s,
    )


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> Path:
    global _LOG_DIR
    _LOG_DIR = tmp_path_factory.mktemp("vllm-serve-logs")
    return ensure_model()


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


def _module_server(frontend: str, demo_model_dir: Path) -> Iterator[ServerProcess]:
    server = start_server(frontend=frontend, model_dir=demo_model_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server_mp(demo_model_dir) -> Iterator[ServerProcess]:
    """``vllm serve`` with vLLM's default multiprocessing frontend, one per test module."""
    yield from _module_server("mp", demo_model_dir)


@pytest.fixture(scope="module")
def server_inprocess(demo_model_dir) -> Iterator[ServerProcess]:
    """``vllm serve --disable-frontend-multiprocessing``, one per test module."""
    yield from _module_server("inprocess", demo_model_dir)


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
