"""register() on a V1 release, in fresh interpreters (patches are process-wide): the right
integration is installed, the opt-out and an explicit server backend keep vLLM's behaviour, an
unknown version is refused with one log line and no exception; the early check's messages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap


def _run(code: str, *, prelude: str = "", **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "DOTVLLM_DISABLE"}
    full_env.update(env)
    source = textwrap.dedent(prelude) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", source], env=full_env, capture_output=True, text=True, timeout=240)


_PARAMS = """
    import inspect
    from types import SimpleNamespace
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams
    def validator():
        # vLLM >= 0.17: SamplingParams._validate_structured_outputs; 0.12 - 0.16: the V1 InputProcessor's
        # check; 0.11: the V1 Processor's.
        if hasattr(SamplingParams, "_validate_structured_outputs"):
            return SamplingParams._validate_structured_outputs
        try:
            from vllm.v1.engine.input_processor import InputProcessor as Processor
        except ImportError:
            from vllm.v1.engine.processor import Processor
        return Processor._validate_structured_output
    def check(backend, **so):
        sp = SamplingParams(structured_outputs=StructuredOutputsParams(**so))
        cfg = SimpleNamespace(backend=backend)
        try:
            if hasattr(SamplingParams, "_validate_structured_outputs"):
                # (model_config, structured_outputs_config, tokenizer); 0.17 - 0.23 have no model_config
                args = {"model_config": SimpleNamespace(is_diffusion=False), "structured_outputs_config": cfg,
                        "tokenizer": object()}
                names = inspect.signature(SamplingParams._validate_structured_outputs).parameters
                sp._validate_structured_outputs(**{k: v for k, v in args.items() if k in names})
            else:
                processor = SimpleNamespace(structured_outputs_config=cfg,
                                            model_config=SimpleNamespace(skip_tokenizer_init=False))
                validator()(processor, sp)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return sp.structured_outputs._backend
"""


def test_register_routes_auto_servers_to_dotvllm():
    r = _run(prelude=_PARAMS, code="""
        from dotvllm_plugin.integrations import register
        register(); register()
        print("auto", check("auto", regex="a+"))
        print("bad", check("auto", regex="(a"))
        print("explicit", check("xgrammar", regex="a+"))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "auto dotvllm" in r.stdout
    # vLLM's client error where it has one (>= 0.29), else our ValueError (0.11 answers it with 400).
    assert re.search(r"bad (VLLMValidationError|RegexSyntaxError|GrammarError): structured_outputs\.regex: "
                     r"invalid regex", r.stdout), r.stdout
    assert "explicit xgrammar" in r.stdout


def test_opt_out_leaves_vllm_untouched():
    r = _run(prelude=_PARAMS, code="""
        from dotvllm_plugin.integrations import register
        register()
        assert not getattr(validator(), "_dotvllm", False)
        print("auto", check("auto", regex="a+"))
    """, DOTVLLM_DISABLE="1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "auto xgrammar" in r.stdout


def test_unknown_version_is_refused_with_one_line_and_no_exception():
    r = _run(prelude=_PARAMS, code="""
        import logging
        logging.basicConfig(level=logging.INFO)
        import vllm.version
        vllm.version.__version__ = "0.99.0"
        from dotvllm_plugin.integrations import register
        register(); register()
        assert not getattr(validator(), "_dotvllm", False)
        print("alive")
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "alive" in r.stdout
    # vLLM's own logging configuration decides the stream (stdout on some releases).
    output = r.stdout + r.stderr
    lines = [line for line in output.splitlines() if "vLLM 0.99.0 is not supported" in line]
    assert len(lines) == 1, output[-3000:]


def test_version_gate_knows_the_checked_v1_releases_only():
    from dotvllm_plugin.integrations import supported_engine

    for version in ("0.11.2", "0.11.2.post2", "0.14.1", "0.15.0", "0.16.0", "0.17.1", "0.18.1", "0.19.1", "0.20.2",
                    "0.21.0", "0.22.1", "0.24.0", "0.27.1", "0.28.0", "0.29.0", "0.32.0", "0.32.0+cpu", "0.33.0",
                    "0.34.0"):
        assert supported_engine(version) == "v1", version
    for version in ("0.10.2", "0.11.1", "0.12.0", "0.12.0.post2", "0.13.0", "0.14.0", "0.25.0", "0.26.0", "0.27.0",
                    "0.35.0", "not-a-version"):
        assert supported_engine(version) is None, version
    assert supported_engine("0.9.2") == "v0"
