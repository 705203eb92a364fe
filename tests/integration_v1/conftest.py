"""Harness for the V1 integration tests: one real ``vllm serve`` (vLLM V1 engine) on loopback.

Every test here gets the ``integration`` and ``v1`` markers. They need the V1 CPU environment
(``bash scripts/setup_env_v1.sh``; run ``.venv-v1/bin/python -m pytest tests/integration_v1``);
in any other environment (the V0 ``.venv`` of the README) they are skipped, unless
``DOTVLLM_REQUIRE_INTEGRATION_V1=1`` (set by ``.ci/run`` for its V1 run) turns the skip into a
failure.

``v1_server`` (module) starts the demo model once per module (~80 s on 2 cores) with
``--dtype float32 --max-model-len 1024`` and ``VLLM_CPU_KVCACHE_SPACE=2``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from dotvllm_plugin.devtools.demo_model import ensure_model
from dotvllm_plugin.devtools.server import ServerProcess, installed_vllm_version, start_server
from dotvllm_plugin.integrations import supported_engine

HERE = Path(__file__).resolve().parent
STARTUP_TIMEOUT_S = float(os.environ.get("DOTVLLM_SERVER_STARTUP_TIMEOUT_S", "400"))
V1_SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "DOTVLLM_COMPILE_TIMEOUT_S": "15"}


def _not_v1_reason() -> str | None:
    version = installed_vllm_version()
    if version is None:
        return "vLLM is not installed here (bash scripts/setup_env_v1.sh; use .venv-v1/bin/python)"
    if supported_engine(version) != "v1":
        return f"vLLM {version} is not a V1 release this plugin supports (use .venv-v1/bin/python)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _not_v1_reason()
    required = os.environ.get("DOTVLLM_REQUIRE_INTEGRATION_V1") == "1"
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.integration)
        item.add_marker(pytest.mark.v1)
        if reason and not required:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def v1_server(tmp_path_factory) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("vllm-v1-logs") / "serve.log"
    server = start_server(ensure_model(), extra_env=V1_SERVER_ENV, log_path=log_path,
                          startup_timeout_s=STARTUP_TIMEOUT_S)
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and HERE in Path(str(item.path)).resolve().parents:
        server = getattr(item, "funcargs", {}).get("v1_server")
        if isinstance(server, ServerProcess):
            state = "running" if server.alive() else f"exited {server.process.returncode}"
            report.sections.append((f"vllm serve log (pid {server.pid}, {state})", server.log(8000)))
    return report
