"""GPU check and timing of the V0 logits processor's mask application (CUDA vs CPU oracle).

Runs without vLLM. Builds the Tekken 131k vocabulary (from a pickled token table when
``--vocab-pickle`` is given, e.g. on a machine without ``mistral-common``), compiles a few
constraints, then for random reachable matcher states compares the CUDA-masked logits row with a
CPU reference (``allowed_token_ids``) and times the per-row application on both devices, for a
model width wider than the vocabulary (padding rows must be masked). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import statistics
import time

import numpy as np
import torch

from dotvllm_plugin import GrammarCompiler, GrammarMatcher, Vocabulary
from dotvllm_plugin.integrations.vllm_v0.logits_processor import DotvllmLogitsProcessor

PATTERNS = {
    "date": r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    "json_string": r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,40}"',
    "words": r"(?:cat|dog|bird|horse)(?: and (?:cat|dog|bird|horse)){0,4}",
    "free_text": r"[^\n]{0,60}",
}


def load_vocab(path: str | None) -> Vocabulary:
    if path:
        table, eos = pickle.load(open(path, "rb"))
        return Vocabulary(table, eos)
    from dotvllm_plugin.devtools.tokenizers import tekken

    return Vocabulary.from_hf_tokenizer(tekken())


def reachable_prefixes(compiled, rng: random.Random, n: int, max_len: int = 12):
    out = []
    eos = set(compiled.vocabulary.eos_token_ids)
    for _ in range(n):
        m = GrammarMatcher(compiled)
        ids = []
        for _ in range(rng.randrange(max_len)):
            allowed = [t for t in m.allowed_token_ids().tolist() if t not in eos]
            if not allowed:
                break
            t = rng.choice(allowed)
            m.accept_token(t)
            ids.append(t)
        out.append(ids)
    return out


def time_calls(fn, repeats: int, sync) -> list[float]:
    ts = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return ts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab-pickle")
    ap.add_argument("--json-out")
    ap.add_argument("--width-pad", type=int, default=128, help="model logits width minus vocabulary size")
    args = ap.parse_args()
    vocab = load_vocab(args.vocab_pickle)
    width = vocab.size + args.width_pad
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, GPU {gpu}, vocabulary {vocab.size} ids, logits width {width}")
    compiler = GrammarCompiler(vocab)
    rng = random.Random(0)
    rows = []
    for name, pattern in PATTERNS.items():
        compiled = compiler.compile_regex(pattern)
        mismatches = 0
        checked = 0
        timings = {d: [] for d in devices}
        for ids in reachable_prefixes(compiled, rng, 20):
            ref = GrammarMatcher(compiled)
            for t in ids:
                ref.accept_token(t)
            expected = np.zeros(width, dtype=bool)
            expected[ref.allowed_token_ids()] = True
            for device in devices:
                proc = DotvllmLogitsProcessor(compiled, key=name)
                logits = torch.randn(width, device=device)
                out = proc(list(ids), logits.clone())
                got = torch.isfinite(out).cpu().numpy()
                checked += 1
                if not np.array_equal(got, expected):
                    mismatches += 1
                sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
                base = logits.clone()
                timings[device].extend(time_calls(lambda: proc(list(ids), base.clone()), 20, sync))
        row = {"pattern": name, "checked": checked, "mismatches": mismatches}
        for d in devices:
            row[f"{d}_p50_us"] = statistics.median(timings[d]) * 1e6
            row[f"{d}_p99_us"] = float(np.percentile(timings[d], 99)) * 1e6
        rows.append(row)
    cols = ["pattern", "checked", "mismatches"] + [f"{d}_{q}_us" for d in devices for q in ("p50", "p99")]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print("(per call: matcher lookup + mask fill + the processor's cached additive mask applied to one row, incl. a logits clone)")
    if args.json_out:
        json.dump({"gpu": gpu, "torch": torch.__version__, "vocab": vocab.size, "width": width, "rows": rows},
                  open(args.json_out, "w"), indent=2)
    if any(r["mismatches"] for r in rows):
        raise SystemExit("MISMATCH between device masks and the CPU reference")


if __name__ == "__main__":
    main()
