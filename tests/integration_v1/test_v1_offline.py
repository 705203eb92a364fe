"""Offline ``vllm.LLM`` on vLLM's V1 engine with the plugin, in a fresh interpreter: structured
requests go through our backend (proof: the compile metrics that the engine-core process
published, read in the calling process, and the engine core's log line), outputs match, and a
constraint that fails to compile in the engine core ends only its own request, with the error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

from dotvllm_plugin.devtools.demo_model import ensure_model
from dotvllm_plugin.devtools.server import SERVER_ENV

from guided_cases import RUNAWAY_REGEX

SCRIPT = textwrap.dedent(r'''
    import json, sys, time
    from prometheus_client import REGISTRY, generate_latest
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=512, seed=0)
    so = lambda **kw: SamplingParams(max_tokens=40, temperature=1.0, structured_outputs=StructuredOutputsParams(**kw))
    params = [so(regex=r"[a-z]{2,6}-[0-9]{2}"), so(choice=["yes", "no"]), so(regex=sys.argv[2])]
    outs = llm.generate(["a", "b", "c"], params, use_tqdm=False)
    # The engine core's counts arrive in snapshots, up to _runtime.PUBLISH_INTERVAL_S late: read
    # until all three compiles are counted (or 15 s have passed; the test then shows what was read).
    deadline = time.monotonic() + 15
    while True:
        metrics = [line for line in generate_latest(REGISTRY).decode().splitlines()
                   if line.startswith("dotvllm_compile_total")]
        if sum(float(line.rsplit(" ", 1)[1]) for line in metrics) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    result = {"texts": [o.outputs[0].text for o in outs], "finish": [o.outputs[0].finish_reason for o in outs],
              "stop_reason": [o.outputs[0].stop_reason for o in outs], "metrics": metrics}
    print("RESULT " + json.dumps(result))
''')


def test_offline_llm_generate_goes_through_our_backend():
    env = {k: v for k, v in os.environ.items() if k not in ("DOTVLLM_DISABLE", "DOTVLLM_METRICS_DIR")}
    env.update(SERVER_ENV)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(ensure_model()), RUNAWAY_REGEX], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    (regex_text, choice_text, runaway_text) = result["texts"]
    assert re.fullmatch(r"[a-z]{2,6}-[0-9]{2}", regex_text), regex_text
    assert choice_text in ("yes", "no"), choice_text
    assert result["finish"][:2] == ["stop", "stop"], result
    # The over-budget constraint: its request alone ends, with the compile error.
    assert runaway_text == "" and result["finish"][2] == "error", result
    assert re.match(r"structured_outputs\.regex: .*exceeds \d+ states", result["stop_reason"][2]), result
    # Compiled by our backend in the engine-core process; counted there, visible here.
    metrics = "\n".join(result["metrics"])
    assert re.search(r'dotvllm_compile_total\{kind="regex",outcome="miss"\} 1\.0', metrics), metrics
    assert re.search(r'dotvllm_compile_total\{kind="choice",outcome="miss"\} 1\.0', metrics), metrics
    assert re.search(r'dotvllm_compile_total\{kind="regex",outcome="error"\} 1\.0', metrics), metrics
    output = r.stdout + r.stderr
    assert len(re.findall(r"dotvllm: request \S+: (regex|choice) compiled by dotvllm", output)) == 2, output[-4000:]
