"""register(): idempotent, opt-out, V0 forced, V1 and unsupported versions refused; early checks.

Patches are process-wide, so register() runs in fresh interpreters here: the scripts of
:data:`SCRIPTS`, started together (one per core at a time) when the first test needs one.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import textwrap

import pytest


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("VLLM_USE_V1", "DOTVLLM_DISABLE")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=240)


#: The scripts the tests run, each in a fresh interpreter: name -> (code, extra environment).
SCRIPTS = {
    "idempotent": ("""
        import os
        from dotvllm_plugin.integrations.vllm_v0 import register
        register(); register()
        from vllm.sampling_params import GuidedDecodingParams
        import vllm.engine.async_llm_engine as a, vllm.engine.llm_engine as l
        post = GuidedDecodingParams.__post_init__
        assert post._dotvllm and not getattr(post.__wrapped__, "_dotvllm", False)
        assert a.get_guided_decoding_logits_processor._dotvllm
        assert l.get_local_guided_decoding_logits_processor._dotvllm
        assert not getattr(a.get_guided_decoding_logits_processor.__wrapped__, "_dotvllm", False)
        assert a.AsyncLLMEngine.__module__ == "vllm.engine.async_llm_engine"
        print("V1", os.environ["VLLM_USE_V1"])
        print("backend", GuidedDecodingParams(regex="a+").backend, GuidedDecodingParams(regex="a+", backend="outlines").backend)
    """, {}),
    "opt-out": ("""
        import os
        from dotvllm_plugin.integrations.vllm_v0 import register
        register()
        from vllm.sampling_params import GuidedDecodingParams
        assert not getattr(GuidedDecodingParams.__post_init__, "_dotvllm", False)
        print("V1", os.environ.get("VLLM_USE_V1"), "backend", GuidedDecodingParams(regex="a(?=b)").backend)
    """, {"DOTVLLM_DISABLE": "1"}),
    "exported-v1": ("""
        import vllm.engine.llm_engine
        from dotvllm_plugin.integrations.vllm_v0 import register
        register()
    """, {"VLLM_USE_V1": "1"}),
    "unsupported-version": ("""
        import vllm.version
        vllm.version.__version__ = "0.11.0"
        from dotvllm_plugin.integrations.vllm_v0 import register
        register()
    """, {}),
    # V0 0.9.2's GuidedDecodingParams carries disable_any_whitespace / disable_additional_properties
    # (also set by the deprecated "backend:options" form) and whitespace_pattern.
    "request-options": ("""
        from dotvllm_plugin.integrations.vllm_v0 import register, runtime
        register()
        from vllm.sampling_params import GuidedDecodingParams

        seen = []
        class Manager:
            def submit(self, kind, spec=None, *, whitespace_pattern=None, options=None): ...
            def compile(self, kind, spec=None, **kwargs):
                seen.append((kind, kwargs))
                raise RuntimeError("recorded")
        runtime.vocabulary_for = lambda tokenizer: None
        runtime.manager_for = lambda vocabulary: Manager()
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        for params in (GuidedDecodingParams(json=schema),
                       GuidedDecodingParams(json=schema, disable_any_whitespace=True, whitespace_pattern="[ ]?"),
                       GuidedDecodingParams(json=schema, backend="dotvllm:disable-any-whitespace,no-additional-properties"),
                       GuidedDecodingParams(json_object=True, disable_additional_properties=True)):
            try:
                runtime.build_processor(params, tokenizer=None)
            except ValueError:
                pass
        for kind, kwargs in seen:
            print("SEEN", kind, sorted(kwargs["options"].items()))
    """, {}),
}


@pytest.fixture(scope="module")
def runs():
    """Every script of :data:`SCRIPTS`, one per core at a time (each spends seconds importing vLLM
    on one core; more at once only queue for the cores): name -> future of its CompletedProcess."""
    with concurrent.futures.ThreadPoolExecutor(min(len(SCRIPTS), os.cpu_count() or 1)) as pool:
        yield {name: pool.submit(_run, code, **env) for name, (code, env) in SCRIPTS.items()}


def test_register_is_idempotent_and_forces_v0(runs):
    r = runs["idempotent"].result()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "V1 0" in r.stdout
    assert "backend dotvllm outlines" in r.stdout
    assert "patched vllm.sampling_params.GuidedDecodingParams.__post_init__" in r.stdout + r.stderr


def test_opt_out_leaves_vllm_untouched(runs):
    r = runs["opt-out"].result()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "V1 None backend None" in r.stdout


def test_exported_v1_is_refused_clearly(runs):
    r = runs["exported-v1"].result()
    assert r.returncode != 0
    assert "dotvllm-plugin needs vLLM's V0 engine, but VLLM_USE_V1=1 is set" in r.stderr


def test_unsupported_vllm_version_is_refused(runs):
    r = runs["unsupported-version"].result()
    assert r.returncode != 0
    assert "supports vLLM >=0.8.5,<0.10.1" in r.stderr and "found vLLM 0.11.0" in r.stderr


@pytest.fixture(scope="module")
def guided_params():
    """vLLM's GuidedDecodingParams class, without the plugin's patches (checks run explicitly)."""
    from vllm.sampling_params import GuidedDecodingParams

    return GuidedDecodingParams


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"regex": "[a-"}, "RegexSyntaxError", r"guided_regex: invalid regex.*position"),
        ({"regex": "(?<=a)b"}, "UnsupportedFeatureError", "lookbehind"),
        ({"regex": r"\bword"}, "UnsupportedFeatureError", "word boundar"),
        ({"json": "{not json"}, "JSONSchemaError", "not valid JSON: .* at line 1 column 2"),
        ({"json": {"type": "array", "uniqueItems": True}}, "UnsupportedFeatureError", "uniqueItems"),
        ({"json": 42}, "JSONSchemaError", "object or a boolean"),
        ({"json": {"type": "string"}, "whitespace_pattern": "x"}, "UnsupportedFeatureError", "whitespace_pattern"),
        ({"choice": []}, "GrammarError", "at least one choice"),
        ({"grammar": "start: A"}, "GrammarError", "guided_grammar: invalid Lark grammar: .*'A' used but not defined"),
    ],
    ids=["regex-syntax", "lookbehind", "word-boundary", "bad-json", "uniqueItems", "schema-not-object",
         "bad-whitespace", "empty-choice", "lark"],
)
def test_early_validation_names_the_problem(guided_params, fields, error, match):
    from dotvllm_plugin.integrations.vllm_v0.constraints import validate

    params = guided_params(**fields)
    with pytest.raises(ValueError, match=match) as info:
        validate(params)
    assert type(info.value).__name__ == error


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"regex": "[0-9]+"}, "regex"),
        ({"choice": ["a", "b"]}, "choice"),
        ({"json": '{"type": "integer"}'}, "json_schema"),
        ({"json": {"type": "integer"}, "whitespace_pattern": "[ ]?"}, "json_schema"),
        ({"json_object": True}, "json_object"),
    ],
    ids=["regex", "choice", "json-text", "json-ws", "json-object"],
)
def test_valid_specs_pass_the_early_check(guided_params, fields, kind):
    from dotvllm_plugin.integrations.vllm_v0.constraints import validate

    assert validate(guided_params(**fields)).kind == kind


@pytest.mark.parametrize(
    ("backend", "ours"),
    [(None, True), ("dotvllm", True), ("xgrammar", False), ("outlines:no-fallback", False),
     ("lm-format-enforcer", False), ("guidance", False)],
    ids=["unnamed", "dotvllm", "xgrammar", "outlines-options", "lmfe", "guidance"],
)
def test_routing_by_backend_name(guided_params, backend, ours):
    from dotvllm_plugin.integrations.vllm_v0.constraints import is_ours

    assert is_ours(guided_params(regex="a", backend=backend)) is ours


def test_request_options_reach_the_compilation_manager(runs):
    r = runs["request-options"].result()
    assert r.returncode == 0, r.stderr[-3000:]
    seen = [line for line in r.stdout.splitlines() if line.startswith("SEEN")]
    assert seen == [
        "SEEN json_schema []",
        "SEEN json_schema [('disable_any_whitespace', True), ('whitespace_pattern', '[ ]?')]",
        "SEEN json_schema [('disable_additional_properties', True), ('disable_any_whitespace', True)]",
        "SEEN json_object [('disable_additional_properties', True)]",
    ], r.stdout[-3000:] + r.stderr[-3000:]
