"""Offline ``vllm.LLM`` (LLMEngine's synchronous path) with the plugin, in a fresh interpreter."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

from dotvllm_plugin.devtools.server import SERVER_ENV

SCRIPT = textwrap.dedent(r'''
    import json, sys
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import GuidedDecodingParams

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer",
              "minimum": 0, "maximum": 99}}, "required": ["ok", "n"], "additionalProperties": False}
    llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=512, seed=0)
    params = [
        SamplingParams(max_tokens=40, n=3, temperature=1.0,
                       guided_decoding=GuidedDecodingParams(regex=r"[a-z]{2,6}-[0-9]{2}")),
        SamplingParams(max_tokens=40, temperature=1.0, guided_decoding=GuidedDecodingParams(json=schema)),
        SamplingParams(max_tokens=40, temperature=1.0, guided_decoding=GuidedDecodingParams(choice=["x", "y"])),
        SamplingParams(max_tokens=40, temperature=1.0,
                       guided_decoding=GuidedDecodingParams(regex=r"[0-9]{3}", backend="xgrammar")),
    ]
    outs = llm.generate(["a", "b", "c", "d"], params, use_tqdm=False)
    result = {"texts": [[c.text for c in o.outputs] for o in outs],
              "finish": [[c.finish_reason for c in o.outputs] for o in outs]}
    try:
        SamplingParams(guided_decoding=GuidedDecodingParams(regex="a(?<=b)"))
    except ValueError as e:
        result["bad"] = f"{type(e).__name__}: {e}"
    print("RESULT " + json.dumps(result))
''')


def test_offline_llm_generate_is_constrained(demo_model_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_USE_V1", "DOTVLLM_DISABLE")}
    env.update(SERVER_ENV)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(demo_model_dir)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    regex_texts, json_texts, choice_texts, builtin_texts = result["texts"]
    assert len(regex_texts) == 3 and all(re.fullmatch(r"[a-z]{2,6}-[0-9]{2}", t) for t in regex_texts), regex_texts
    value = json.loads(json_texts[0])
    assert isinstance(value["ok"], bool) and 0 <= value["n"] <= 99 and set(value) == {"ok", "n"}
    assert choice_texts[0] in ("x", "y")
    assert re.fullmatch(r"[0-9]{3}", builtin_texts[0]), builtin_texts
    assert all(f == "stop" for fs in result["finish"] for f in fs), result["finish"]
    assert result["bad"].startswith("UnsupportedFeatureError: guided_regex:") and "lookbehind" in result["bad"]
    # Our three constraints were compiled by the plugin (the built-in backend's was not).
    assert r.stdout.count("cache miss") + r.stderr.count("cache miss") == 3
