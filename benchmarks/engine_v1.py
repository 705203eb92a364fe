"""Short structured requests on vLLM's V1 engine in one process: dotvllm against vLLM's default backend.

The server-level comparison (``e2e_serving_v1.py``) on the 2-core CPU machine is dominated by how
vLLM's three server processes share the cores (docs/benchmarks.md). This measures the engine
alone: ``vllm.LLM`` with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (scheduler, structured-output
manager and model runner in this process), the demo model, rounds of 16 requests (seeds as in
``e2e_serving_v1.py``), each round one ``generate`` call; the engine steps per round are counted
at ``Scheduler.schedule``. Run it once per backend, alternating::

    .venv-v1/bin/python benchmarks/engine_v1.py phone 30                     # dotvllm
    DOTVLLM_DISABLE=1 .venv-v1/bin/python benchmarks/engine_v1.py phone 30   # vLLM's default (xgrammar)

Kinds: ``phone`` (the regex ``\\(\\d{3}\\) \\d{3}-\\d{4}``), ``choice`` (3 words), ``plain`` (no
constraint, 96 tokens: the same code on both, a control). Prints one ``RESULT`` line.
"""

import os
import statistics
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.sampling_params import StructuredOutputsParams  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from dotvllm_plugin.devtools.demo_model import ensure_model  # noqa: E402

PHONE = r"\(\d{3}\) \d{3}-\d{4}"


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "phone"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    so = {"phone": StructuredOutputsParams(regex=PHONE),
          "choice": StructuredOutputsParams(choice=["positive", "negative", "neutral"]), "plain": None}[kind]
    llm = LLM(model=str(ensure_model()), dtype="float32", max_model_len=1024, seed=0)
    steps = [0]
    schedule = Scheduler.schedule

    def counted(self, *args, **kwargs):
        steps[0] += 1
        return schedule(self, *args, **kwargs)

    Scheduler.schedule = counted

    def one_round(rep: int):
        params = [SamplingParams(max_tokens=96, temperature=1.0, seed=rep * 1000 + i, structured_outputs=so)
                  for i in range(16)]
        return llm.generate([f"Item {rep * 1000 + i}:" for i in range(16)], params, use_tqdm=False)

    one_round(99)  # warm-up: the constraint's compile is not timed
    steps[0] = 0
    times = []
    for rep in range(rounds):
        t = time.perf_counter()
        outs = one_round(rep)
        times.append(time.perf_counter() - t)
    backend = "default" if os.environ.get("DOTVLLM_DISABLE") else "dotvllm"
    print(f"RESULT {kind} backend={backend} rounds {rounds}: mean {statistics.mean(times) * 1e3:.1f} ms, "
          f"median {statistics.median(times) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms, "
          f"steps/round {steps[0] / rounds:.1f}, tokens in the last round "
          f"{sum(len(o.outputs[0].token_ids) for o in outs)}", flush=True)


if __name__ == "__main__":
    main()
